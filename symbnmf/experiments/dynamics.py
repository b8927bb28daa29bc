"""Learning dynamics of BN networks after the first steps: measured, and predicted by scale invariance (issue 13).

The paper's last finding (Yang et al. 2019, Sec. 5): after a single optimisation step a
batch-normalized network reaches a state in which the weight gradients have a far smaller
dynamic range across layers than at initialisation. This module measures it on the training
network of :mod:`symbnmf.experiments.train` (digits, BN after every hidden layer, linear readout)
and predicts it from two facts.

**Step 0 (mean field).** The squared weight-gradient norm grows by backward.G = lambda_down_G per
layer towards the input (docs/theory.md; App. L), so ``||grad W^l|| ∝ lambda_down_G^{(L-l)/2}``.

**Scale invariance.** With eps = 0, BN makes the loss invariant to the scale of each column
(unit) of ``W^l``, for every BN layer l. Differentiating ``loss(c W) = loss(W)`` in ``c`` gives
``<W^l, grad W^l> = 0`` and ``grad loss(c W) = grad loss(W) / c``. Hence plain SGD,
``W <- W - eta grad``, moves orthogonally to ``W`` and grows its norm *exactly*:

    ||W_{t+1}||^2 = ||W_t||^2 + eta^2 ||grad_t||^2                                   (1)

and, writing ``c_l = ||W^l||^2 ||grad W^l||^2`` (the squared gradient at unit scale, a property
of the direction of W, of the batch and of the other layers), the *scale-only* model holds
``c_l`` at its step-0 value and iterates

    w_{t+1} = w_t + eta^2 c_l / w_t,      ||grad_t||^2 = c_l / w_t,      w = ||W^l||^2.    (2)

Consequences, derived from (2) (see ``validation/DYNAMICS.md`` for the measurements):

* after one step, ``||grad_1||^2 = g0^2 / (1 + eta^2 g0^2 / w0)`` (g0 = ||grad_0||): layers whose
  step-0 gradient exceeds ``sqrt(w0)/eta`` are capped at ``||grad_1|| ≈ sqrt(w0)/eta`` whatever
  their depth, so the dynamic range collapses to about ``sqrt(w0)/(eta g_min)``;
* there is no fixed point for the norm: ``w_t^2 = w_0^2 + 2 eta^2 c t + O(log t)`` grows like
  ``sqrt(t)``; the *effective step* ``||ΔW||/||W|| = eta sqrt(c)/w_t`` tends to ``1/sqrt(2t)``
  for every layer (independent of c: every layer ends up with the same effective learning rate),
  and the gradient ``||grad_t|| ≈ (c / (2 eta^2 t))^{1/4}`` keeps the fourth root of the step-0
  squared profile: asymptotically the dynamic range is the *square root* of its step-0 value.

What (2) leaves out, and where it fails, is quantified by the measurement: ``c_l`` changes as the
network learns (the loss falls, the directions of W change: for exploded layers
``W_1 ≈ -eta grad_0`` is a new, rank-B-dominated direction); the readout layer has no BN (no
orthogonality); gamma and beta are trained and not scale-invariant; RMSProp divides each step by
the running gradient scale, so its step size does not grow with the gradient and (1) does not hold.

The seeds are independent networks, vmapped and sharded over all JAX devices, in calls whose
width is planned from a memory budget (:mod:`symbnmf.experiments._memory`); network ``s`` uses
``fold_in(PRNGKey(seed), s)`` and its own batch schedule, so its numbers do not depend on the
number of calls or of devices (bit-identical at the same call width; a narrower call, forced by a
small budget, rounds differently in float32).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from symbnmf._errors import SymbnmfError
from symbnmf.experiments.train import (
    Dataset,
    TrainConfig,
    _batch_schedule,
    _fit_rate,
    _init_params,
    _make_forward,
    _phi,
    _xent,
    load_digits,
    optimizer_update,
)

__all__ = [
    "DynamicsConfig",
    "DynamicsResult",
    "first_step_prediction",
    "measure_dynamics",
    "norm_recursion",
    "step_grid",
]

#: per-step, per-layer records of one network (layer axis: the L BN layers, then the readout).
RECORDS = ("w_sq", "grad_w_sq", "dw_sq", "w_dw", "w_grad", "w_w0")


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DynamicsConfig:
    """One dynamics experiment: ``seeds`` networks of the same shape trained for ``steps`` steps.

    Fields as in :class:`symbnmf.experiments.train.TrainConfig` (``depth`` BN layers of ``width``
    units, batch ``batch_size``, ``optimizer`` sgd|rmsprop with learning rate ``lr``, BN's
    ``gamma``, ``beta``, ``eps``), plus ``seeds`` (independent networks, >= 2 for error bars is
    advised) and the base ``seed``.
    """

    depth: int
    batch_size: int
    width: int = 128
    steps: int = 100
    lr: float = 0.05
    optimizer: str = "sgd"
    activation: str = "relu"
    seeds: int = 8
    gamma: float = 1.0
    beta: float = 0.0
    eps: float = 0.0
    seed: int = 0

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            depth=self.depth,
            batch_size=self.batch_size,
            width=self.width,
            steps=self.steps,
            lr=self.lr,
            optimizer=self.optimizer,
            activation=self.activation,
            gamma=self.gamma,
            beta=self.beta,
            eps=self.eps,
            seed=self.seed,
        )

    def validate(self) -> DynamicsConfig:
        self.train_config().validate()
        if int(self.seeds) != self.seeds or self.seeds < 1:
            raise SymbnmfError(f"seeds must be an integer >= 1, got {self.seeds!r}; use e.g. --seeds 8")
        from symbnmf._activations import get_activation

        get_activation(self.activation).require_bound()
        return self


def step_grid(steps: int, per_decade: int = 8) -> list[int]:
    """Steps 0, 1, 2, 3 and a log grid up to ``steps`` (``per_decade`` points per decade; 10, 100, ... included)."""
    if steps < 0:
        raise SymbnmfError(f"steps must be >= 0, got {steps}")
    pts = set(range(min(steps, 3) + 1)) | {steps}
    k = 0
    while True:
        v = round(10 ** (k / per_decade))
        if v > steps:
            break
        pts.add(v)
        k += 1
    return sorted(pts)


# ---------------------------------------------------------------------------------------------
# the measurement (JAX, imported lazily)
# ---------------------------------------------------------------------------------------------
def _layer_sums(a: dict, b: dict) -> Any:
    """Per-layer <a, b> over the weight matrices: (L+1,) = [W^1 (w_in), W^2..W^L (w), readout]."""
    import jax.numpy as jnp

    return jnp.concatenate(
        [
            jnp.sum(a["w_in"] * b["w_in"])[None],
            jnp.sum(a["w"] * b["w"], axis=(1, 2)),
            jnp.sum(a["w_out"] * b["w_out"])[None],
        ]
    )


_COMPILED: dict[tuple, Callable] = {}


def _compiled_dynamics(cfg: DynamicsConfig, d_in: int, n_out: int, remat: bool = False) -> Callable:
    """jit(vmap over networks) of one network's training with per-step records (cached per shape).

    ``remat``: each layer of the forward pass is ``jax.checkpoint``-ed (the backward pass stores
    only the layer inputs)."""
    key = (
        cfg.activation,
        float(cfg.eps),
        cfg.optimizer,
        d_in,
        cfg.width,
        cfg.depth,
        n_out,
        cfg.gamma,
        cfg.beta,
        bool(remat),
    )
    if key in _COMPILED:
        return _COMPILED[key]
    import jax
    import jax.numpy as jnp

    forward = _make_forward(_phi(cfg.activation), cfg.eps, remat=remat)
    L, N = cfg.depth, cfg.width

    def loss_fn(p, pert, xb, yb):
        logits, _ = forward(p, xb, perturb=pert)
        return _xent(logits, yb)

    vg = jax.value_and_grad(loss_fn, argnums=(0, 1))

    def one_network(rng_key, idx, x_train, y_train, lr):
        params = _init_params(rng_key, d_in, N, L, n_out, cfg.gamma, cfg.beta)
        opt0 = jax.tree_util.tree_map(jnp.zeros_like, params)

        def step(carry, ib):
            p, v, p0 = carry
            xb, yb = x_train[ib], y_train[ib]
            pert = jnp.zeros((L, ib.shape[0], N), xb.dtype)
            loss, (g, gx) = vg(p, pert, xb, yb)
            p_new, v = optimizer_update(cfg.optimizer, p, v, g, lr)
            dw = jax.tree_util.tree_map(lambda a, b: a - b, p_new, p)
            rec = {
                "loss": loss,
                "w_sq": _layer_sums(p, p),
                "grad_w_sq": _layer_sums(g, g),
                "dw_sq": _layer_sums(dw, dw),
                "w_dw": _layer_sums(p, dw),
                "w_grad": _layer_sums(p, g),
                "w_w0": _layer_sums(p, p0),
                "grad_x_sq": jnp.sum(jnp.square(gx), axis=(1, 2)),
            }
            return (p_new, v, p0), rec

        _, recs = jax.lax.scan(step, (params, opt0, params), idx)
        return recs

    fn = jax.jit(jax.vmap(one_network, in_axes=(0, 0, None, None, None)))
    _COMPILED[key] = fn
    return fn


def record_floats(cfg: DynamicsConfig) -> int:
    """Floats of the per-step records of one network: (steps + 1) x (6 (L+1) + L + 1)."""
    return (cfg.steps + 1) * (len(RECORDS) * (cfg.depth + 1) + cfg.depth + 1)


def bytes_per_network(cfg: DynamicsConfig, d_in: int = 64, n_out: int = 10, remat: bool = False) -> int:
    """Upper estimate of one network's working memory inside a call (bytes; float32).

    Parameters, initial parameters, gradients, optimiser state, update and updated parameters
    (:data:`symbnmf.experiments._memory.PARAM_COPIES` copies), the activations one step's
    backward pass stores (all of them, or with ``remat`` the layer inputs), and the per-step
    records the call returns (checked against XLA's ``memory_analysis`` in the tests).
    """
    from symbnmf.experiments import _memory as M

    P = M.n_params(d_in, cfg.width, cfg.depth, n_out)
    step = M.step_bytes(d_in, cfg.width, cfg.depth, n_out, cfg.batch_size, remat, perturb=True)
    return M.PARAM_COPIES * M.F32 * P + step + M.F32 * record_floats(cfg) + M.F32 * (cfg.steps + 1) * cfg.batch_size


def plan_memory(
    cfg: DynamicsConfig,
    ds: Dataset | None = None,
    *,
    memory_bytes: int | None = None,
    devices: int = 1,
    chunk: int | None = None,
) -> Any:
    """The :class:`symbnmf.experiments._memory.MemoryPlan` of :func:`measure_dynamics` (calls, width, remat)."""
    from symbnmf.experiments import _memory as M

    d_in, n_out = (64, 10) if ds is None else (ds.x_train.shape[1], ds.n_classes)
    shared = 0 if ds is None else ds.x_train.nbytes + ds.y_train.nbytes
    return M.plan_networks(
        int(cfg.seeds),
        lambda remat: bytes_per_network(cfg, d_in, n_out, remat),
        kept_per_network=8 * record_floats(cfg),  # float64 on the host
        shared_bytes=shared,
        memory_bytes=memory_bytes,
        devices=devices,
        chunk=chunk,
    )


def _run_networks(
    cfg: DynamicsConfig,
    ds: Dataset,
    *,
    devices: Any = None,
    memory_bytes: int | None = None,
    chunk: int | None = None,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], Any]:
    """All ``cfg.seeds`` networks, in calls planned from the memory budget (:func:`plan_memory`),
    each call's networks axis sharded over ``devices`` (default all); returns (records, plan).

    Each call returns only the per-step records of its networks, copied into preallocated host
    arrays (float64) while the next call runs; padding networks of the last call are dropped.
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devs = list(devices) if devices is not None else jax.devices()
    nd = len(devs)
    d_in = ds.x_train.shape[1]
    plan = plan_memory(cfg, ds, memory_bytes=memory_bytes, devices=nd, chunk=chunk)
    fn = _compiled_dynamics(cfg, d_in, ds.n_classes, plan.remat)
    S, size = int(cfg.seeds), plan.chunk
    sharding = NamedSharding(Mesh(np.array(devs), ("nets",)), PartitionSpec("nets"))
    base = jax.random.PRNGKey(cfg.seed)
    n = len(ds.y_train)
    xtr, ytr = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    lr = jnp.float32(cfg.lr)
    out: dict[str, np.ndarray] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=S, desc="networks", unit="net", leave=False, file=sys.stderr)

    def collect(lo: int, res: dict[str, Any]) -> None:
        k = min(size, S - lo)
        for name, v in res.items():
            if name not in out:  # preallocated: no list of chunks, no concatenate copy
                out[name] = np.empty((S, *v.shape[1:]), dtype=np.float64)
            out[name][lo : lo + k] = np.asarray(v)[:k]
        if bar is not None:
            bar.update(k)

    try:
        pending = None  # dispatch call c+1 before copying call c's records to the host
        for c in range(plan.nchunks):
            ids = range(c * size, (c + 1) * size)  # ids >= S are padding, computed and dropped
            keys = np.stack([np.asarray(jax.random.fold_in(base, s)) for s in ids])
            idx = np.stack(
                [_batch_schedule(n, cfg.batch_size, cfg.steps + 1, np.random.default_rng([cfg.seed, s])) for s in ids]
            )
            res = fn(jax.device_put(keys, sharding), jax.device_put(idx, sharding), xtr, ytr, lr)
            if pending is not None:
                collect(*pending)
            pending = (c * size, res)
        if pending is not None:
            collect(*pending)
    finally:
        if bar is not None:
            bar.close()
    return out, plan


# ---------------------------------------------------------------------------------------------
# the prediction
# ---------------------------------------------------------------------------------------------
def first_step_prediction(grad_sq0: Any, w_sq0: Any, lr: float) -> dict[str, np.ndarray]:
    """Scale-invariance prediction of the first SGD step, per BN layer (module docstring, eq. (1), (2)).

    * ``w_sq1 = w_sq0 + lr^2 grad_sq0`` (exact for a BN layer: the step is orthogonal to W);
    * ``grad_sq1 = grad_sq0 * w_sq0 / w_sq1`` (gradient ∝ 1/||W|| at fixed direction);
    * ``eff_step0 = lr sqrt(grad_sq0 / w_sq0)``: the effective step ||ΔW||/||W|| of step 0.
    """
    g0 = np.asarray(grad_sq0, float)
    w0 = np.asarray(w_sq0, float)
    w1 = w0 + lr**2 * g0
    return {"w_sq1": w1, "grad_sq1": g0 * w0 / w1, "eff_step0": lr * np.sqrt(g0 / w0)}


def norm_recursion(grad_sq0: Any, w_sq0: Any, lr: float, steps: int) -> dict[str, np.ndarray]:
    """Iterate the scale-only model (2): ``w_{t+1} = w_t + lr^2 c / w_t`` with ``c = w_sq0 grad_sq0`` fixed.

    Returns arrays with a leading step axis t = 0..steps: ``w_sq``, ``grad_sq = c / w``, and
    ``eff_step = lr sqrt(c) / w`` (the effective step ||ΔW||/||W||; tends to 1/sqrt(2t)).
    """
    w = np.asarray(w_sq0, float).copy()
    c = w * np.asarray(grad_sq0, float)
    ws = [w]
    for _ in range(int(steps)):
        w = w + lr**2 * c / w
        ws.append(w)
    W = np.stack(ws)
    return {"w_sq": W, "grad_sq": c / W, "eff_step": lr * np.sqrt(c) / W}


def _theory_lambda(cfg: DynamicsConfig, method: str = "auto") -> tuple[float | None, str | None]:
    """backward.G of phi(gamma x + beta) at B (the front door), or (None, reason)."""
    from symbnmf.experiments.trainability import _theory_activation, theory_records

    if cfg.eps != 0:
        return None, "BN eps > 0 has no mean field theory in symbnmf (theory uses eps = 0)"
    if cfg.batch_size < 4:
        return None, f"B={cfg.batch_size} is outside the theory (needs B >= 4, App. J)"
    recs, _source, reason = theory_records(
        _theory_activation(cfg.activation, cfg.gamma, cfg.beta), [cfg.batch_size], method
    )
    if recs[0] is None:
        return None, reason or "theory unavailable"
    return float(recs[0]["backward"]["G"]), None


# ---------------------------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------------------------
def _log_mean(a: np.ndarray, axis: int = 0) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(m > 0, m, 1.0)
    return np.log(np.mean(a / m, axis=axis)) + np.log(np.squeeze(m, axis=axis))


@dataclass
class DynamicsResult:
    """Per-network, per-step, per-layer records of a dynamics run, and their summary.

    Arrays have shape (seeds, steps + 1, L + 1) (layer axis: BN layers 1..L, then the readout)
    except ``grad_x_sq`` (seeds, steps + 1, L) = ||d loss/d x^l||^2 and ``loss`` (seeds, steps + 1).
    Record t is taken *before* the update of step t: ``w_sq[:, t] = ||W_t||^2``,
    ``grad_w_sq[:, t] = ||grad W_t||^2`` (mini-batch t), ``dw_sq[:, t] = ||W_{t+1} - W_t||^2``,
    ``w_dw[:, t] = <W_t, W_{t+1} - W_t>``, ``w_grad[:, t] = <W_t, grad W_t>``,
    ``w_w0[:, t] = <W_t, W_0>``.
    """

    config: DynamicsConfig
    records: dict[str, np.ndarray]
    lam: float | None
    theory_reason: str | None
    devices: int
    seconds: float
    memory: dict[str, Any] | None = None  # the memory plan (:meth:`MemoryPlan.to_json`)

    @property
    def L(self) -> int:
        return self.config.depth

    def norms(self, name: str) -> np.ndarray:
        """sqrt of a squared-norm record."""
        return np.sqrt(self.records[name])

    def effective_step(self) -> np.ndarray:
        """||ΔW^l|| / ||W^l|| per network, step, layer."""
        return np.sqrt(self.records["dw_sq"] / self.records["w_sq"])

    def overlap_with_init(self) -> np.ndarray:
        """cos^2(W_t, W_0) per network, step, layer: the share of ||W_t||^2 still along the random
        initial weights. The scale model predicts ``w_sq0 / w_sq_t`` (every SGD step is orthogonal to
        W, hence to W_0 at step 0); when it is small, W_t is dominated by past gradients (rank <= B-1
        each) and the mean-field picture of iid weights no longer applies."""
        r = self.records
        return r["w_w0"] ** 2 / (r["w_sq"] * r["w_sq"][:, :1])

    def dynamic_range(self) -> np.ndarray:
        """(seeds, steps + 1): max / min over the BN layers of ||grad W^l||."""
        g = self.norms("grad_w_sq")[:, :, : self.L]
        return g.max(axis=2) / g.min(axis=2)

    def orthogonality(self) -> np.ndarray:
        """(seeds, steps + 1, L): |<W, ΔW>| / (||W|| ||ΔW||) for the BN layers (0 for plain SGD, eq. (1))."""
        r, L = self.records, self.L
        return np.abs(r["w_dw"][..., :L]) / np.sqrt(r["w_sq"][..., :L] * np.maximum(r["dw_sq"][..., :L], 1e-300))

    def step0_rate(self, fit_layers: tuple[int, int] | None = None, n_boot: int = 200) -> dict[str, Any]:
        """Per-layer growth of the mean ||grad W^l||^2 at step 0 towards the input, with a bootstrap error.

        Fit ``ln mean_seeds ||grad W^l||^2`` against l on ``fit_layers`` (1-based BN layers;
        default [L//4 + 1, L - 2]); ``rate = exp(-slope)``, to compare with backward.G.
        """
        L = self.L
        lo, hi = fit_layers if fit_layers is not None else (L // 4 + 1, L - 2)
        if not (1 <= lo < hi <= L):
            raise SymbnmfError(f"fit window {lo}..{hi} must satisfy 1 <= lo < hi <= depth={L}; use a deeper network")
        g0 = self.records["grad_w_sq"][:, 0, :L]
        rate = _fit_rate(_log_mean(g0), lo, hi)
        S = g0.shape[0]
        rng = np.random.default_rng(12345)
        boots = [_fit_rate(_log_mean(g0[rng.integers(0, S, S)]), lo, hi) for _ in range(n_boot)] if S > 1 else [rate]
        return {"rate": rate, "rate_se": float(np.std(boots)), "fit_layers": [lo, hi], "lambda_down_G": self.lam}

    def prediction(self) -> dict[str, Any]:
        """Scale-model predictions from the measured step-0 means (per BN layer) and from the theory profile."""
        cfg, L = self.config, self.L
        r = self.records
        g0 = r["grad_w_sq"][:, 0, :L].mean(axis=0)
        w0 = r["w_sq"][:, 0, :L].mean(axis=0)
        out: dict[str, Any] = {"from_measured_step0": first_step_prediction(g0, w0, cfg.lr)}
        out["recursion"] = norm_recursion(g0, w0, cfg.lr, cfg.steps)
        if self.lam is not None:
            # theory profile lambda^{(L-l)}, anchored at the measured mean over the upper half of the layers
            ls = np.arange(1, L + 1)
            expo = (L - ls) * math.log(self.lam)
            top = slice(L // 2, L)
            a = float(np.mean(np.log(g0[top]) - expo[top]))
            g0_th = np.exp(a + expo)
            w0_th = np.full(L, float(cfg.width))  # ||W^l||^2 ≈ N at initialisation (unit columns on average)
            out["theory_step0_grad_sq"] = g0_th
            out["from_theory"] = first_step_prediction(g0_th, w0_th, cfg.lr)
            out["theory_recursion"] = norm_recursion(g0_th, w0_th, cfg.lr, cfg.steps)
        return out

    def summary(self, grid: Sequence[int] | None = None) -> dict[str, Any]:
        """JSON-ready summary on a log grid of steps: mean and sd over seeds, predictions, comparisons."""
        cfg, L = self.config, self.L
        grid = list(grid) if grid is not None else step_grid(cfg.steps)
        r = self.records
        gw = self.norms("grad_w_sq")
        w = self.norms("w_sq")
        gx = self.norms("grad_x_sq")
        eff = self.effective_step()
        dr = self.dynamic_range()
        cos2 = self.overlap_with_init()
        unit = r["w_sq"] * r["grad_w_sq"]  # c_l = ||W||^2 ||grad W||^2, constant in the scale model
        pred = self.prediction()

        def ms(a: np.ndarray) -> dict[str, list]:
            sd = a.std(axis=0, ddof=1) if a.shape[0] > 1 else np.zeros(a.shape[1:])
            return {"mean": _round(a.mean(axis=0)), "sd": _round(sd)}

        per_step = []
        rec_pred = pred["recursion"]
        for t in grid:
            per_step.append(
                {
                    "step": t,
                    "loss": ms(r["loss"][:, t][:, None])["mean"][0],
                    "grad_w_norm": ms(gw[:, t]),
                    "w_norm": ms(w[:, t]),
                    "grad_x_norm": ms(gx[:, t]),
                    "effective_step": ms(eff[:, t]),
                    "cos2_w_w0": ms(cos2[:, t]),
                    "unit_scale_grad_sq": ms(unit[:, t]),
                    "dynamic_range": {
                        "mean": float(dr[:, t].mean()),
                        "sd": float(dr[:, t].std(ddof=1)) if dr.shape[0] > 1 else 0.0,
                    },
                    "predicted_scale_model": {
                        "grad_w_norm": _round(np.sqrt(rec_pred["grad_sq"][t])),
                        "w_norm": _round(np.sqrt(rec_pred["w_sq"][t])),
                        "dynamic_range": float(np.sqrt(rec_pred["grad_sq"][t].max() / rec_pred["grad_sq"][t].min())),
                    },
                }
            )
        fs = pred["from_measured_step0"]
        first = {
            "w_norm_predicted": _round(np.sqrt(fs["w_sq1"])),
            "w_norm_measured_rms": _round(np.sqrt(r["w_sq"][:, 1, :L].mean(axis=0))) if cfg.steps >= 1 else None,
            "w_sq_rel_err_per_network": float(
                np.max(
                    np.abs(r["w_sq"][:, 1, :L] - (r["w_sq"][:, 0, :L] + cfg.lr**2 * r["grad_w_sq"][:, 0, :L]))
                    / r["w_sq"][:, 1, :L]
                )
            )
            if cfg.steps >= 1
            else None,
            "grad_w_norm_predicted": _round(np.sqrt(fs["grad_sq1"])),
            "grad_w_norm_measured_rms": _round(np.sqrt(r["grad_w_sq"][:, 1, :L].mean(axis=0)))
            if cfg.steps >= 1
            else None,
            "effective_step0_predicted": _round(fs["eff_step0"]),
        }
        theory: dict[str, Any] = {"lambda_down_G": self.lam, "reason": self.theory_reason}
        if self.lam is not None:
            theory["step0_dynamic_range_predicted"] = float(self.lam ** ((L - 1) / 2))
            theory["step0_grad_w_norm_profile"] = _round(np.sqrt(pred["theory_step0_grad_sq"]))
            ft = pred["from_theory"]
            theory["step1_grad_w_norm"] = _round(np.sqrt(ft["grad_sq1"]))
            theory["step1_w_norm"] = _round(np.sqrt(ft["w_sq1"]))
            g1 = ft["grad_sq1"]
            theory["step1_dynamic_range"] = float(np.sqrt(g1.max() / g1.min()))
            theory["asymptotic_dynamic_range"] = float(self.lam ** ((L - 1) / 4))
        try:
            rate = self.step0_rate()
        except SymbnmfError as exc:
            rate = {"error": str(exc)}
        orth = self.orthogonality()
        return {
            "experiment": "learning dynamics after the first steps (issue 13)",
            "settings": asdict(cfg),
            "layers": [f"W{l}" for l in range(1, L + 1)] + ["readout"],
            "devices": self.devices,
            "seconds": round(self.seconds, 2),
            **({"memory": self.memory} if self.memory is not None else {}),
            "steps": grid,
            "per_step": per_step,
            "first_step": first,
            "step0_rate": rate,
            "orthogonality_max": {"bn_layers": float(np.max(orth)), "step0_bn_layers": float(np.max(orth[:, 0]))},
            "theory": theory,
        }


def _round(a: Any, sig: int = 6) -> list:
    a = np.asarray(a, float)
    return [float(f"{v:.{sig}g}") for v in a.ravel()]


def measure_dynamics(
    config: DynamicsConfig,
    dataset: Dataset | None = None,
    *,
    devices: Any = None,
    theory_method: str | None = "auto",
    memory_bytes: int | None = None,
    progress: bool = False,
) -> DynamicsResult:
    """Train ``config.seeds`` BN networks on digits and record, at every step 0..K, per layer:
    ||W^l||, ||grad W^l||, ||d loss/d x^l||, ||ΔW^l|| and <W^l, ΔW^l> (see :class:`DynamicsResult`).

    The networks are vmapped and their axis is sharded over ``devices`` (default: all JAX devices);
    network s uses ``fold_in(PRNGKey(seed), s)`` and the batch schedule of ``default_rng([seed, s])``.
    ``theory_method`` (None: skip) selects the front-door method for lambda_down_G = backward.G
    of phi(gamma x + beta) at B (Thm 3.9/3.10), the step-0 growth factor of ||grad W^l||^2.

    Memory is bounded by ``memory_bytes`` (default: a quarter of the available RAM, at most
    1 GiB; :mod:`symbnmf.experiments._memory`): the networks run in calls of a width that fits
    it, each returning only its networks' records; when one network per device does not fit,
    every layer is rematerialised (``jax.checkpoint``). The plan is ``result.memory``. A network's
    records are bit-identical for any number of seeds >= the call width (8 per device) and any
    budget that holds one call of that width; a narrower call or remat changes them by float32
    rounding only.
    """
    from symbnmf.experiments._memory import check_available, resolve_budget

    cfg = config.validate()
    memory_bytes = resolve_budget(memory_bytes)
    ds = dataset if dataset is not None else load_digits()
    if cfg.batch_size > len(ds.y_train):
        raise SymbnmfError(
            f"batch size {cfg.batch_size} exceeds the {len(ds.y_train)} training samples; use a smaller one"
        )
    import jax

    nd = len(list(devices)) if devices is not None else jax.device_count()
    check_available(plan_memory(cfg, ds, memory_bytes=memory_bytes, devices=nd), "this dynamics run")
    lam, reason = (None, "theory not requested") if theory_method is None else _theory_lambda(cfg, theory_method)
    t0 = time.perf_counter()
    recs, plan = _run_networks(cfg, ds, devices=devices, memory_bytes=memory_bytes, progress=progress)
    return DynamicsResult(cfg, recs, lam, reason, nd, time.perf_counter() - t0, plan.to_json())


# ---------------------------------------------------------------------------------------------
# figure
# ---------------------------------------------------------------------------------------------
def plot_profiles(ax: Any, summary: dict[str, Any], steps: Sequence[int] = (0, 1, 10, 100)) -> None:
    """||grad W^l|| against layer l at the given steps (mean ± sd over seeds), theory step-0 profile dashed,
    scale-model step-1 prediction dotted (log scale)."""
    L = summary["settings"]["depth"]
    ls = np.arange(1, L + 1)
    by_step = {p["step"]: p for p in summary["per_step"]}
    colors = ["C0", "C1", "C2", "C3", "C4", "C5"]
    for i, t in enumerate(s for s in steps if s in by_step):
        p = by_step[t]["grad_w_norm"]
        m, sd = np.array(p["mean"][:L]), np.array(p["sd"][:L])
        c = colors[i % len(colors)]
        ax.plot(ls, m, "o-", color=c, ms=3, label=f"step {t} (measured)")
        ax.fill_between(ls, np.maximum(m - sd, m * 1e-3), m + sd, color=c, alpha=0.2)
    th = summary["theory"]
    if th.get("lambda_down_G") is not None:
        ax.plot(ls, th["step0_grad_w_norm_profile"], "k--", lw=1, label=r"step 0: $\lambda_G^{\downarrow\,(L-l)/2}$")
    if 1 in by_step:
        ax.plot(ls, summary["first_step"]["grad_w_norm_predicted"], "k:", lw=1.5, label="step 1: scale model")
    ax.set_yscale("log")
    ax.set_xlabel("layer l")
    ax.set_ylabel(r"$\|\nabla_{W^l}\,\mathrm{loss}\|$")


def plot_dynamic_range(ax: Any, summary: dict[str, Any], label: str = "", color: str | None = None) -> None:
    """Dynamic range max_l/min_l ||grad W^l|| against step (step 0 drawn at 0.5 on the log axis)."""
    ts = np.array([max(p["step"], 0.5) for p in summary["per_step"]], float)
    m = np.array([p["dynamic_range"]["mean"] for p in summary["per_step"]])
    sd = np.array([p["dynamic_range"]["sd"] for p in summary["per_step"]])
    pr = np.array([p["predicted_scale_model"]["dynamic_range"] for p in summary["per_step"]])
    (line,) = ax.plot(ts, m, "o-", ms=3, color=color, label=f"{label} measured".strip())
    ax.fill_between(ts, np.maximum(m - sd, 1.0), m + sd, color=line.get_color(), alpha=0.2)
    ax.plot(ts, pr, ":", color=line.get_color(), lw=1.5, label=f"{label} scale model".strip())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step (0 drawn at 0.5)")
    ax.set_ylabel(r"dynamic range $\max_l/\min_l \|\nabla_{W^l}\|$")


def write_figure(summary: dict[str, Any], path: str, force: bool = False) -> None:
    """Two panels of one run: gradient profile at steps 0, 1, 10, 100; dynamic range against step.

    Written atomically through :func:`symbnmf._output.atomic_output`: an existing ``path`` is
    replaced only with ``force``, and never when it is not a regular file.
    """
    from symbnmf._output import atomic_output, check_output

    check_output(path, force)  # refuse before drawing
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary["settings"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    plot_profiles(axes[0], summary)
    axes[0].legend(fontsize=7)
    plot_dynamic_range(axes[1], summary)
    axes[1].legend(fontsize=7)
    fig.suptitle(
        f"{s['activation']} + BN, B={s['batch_size']}, L={s['depth']}, N={s['width']}, "
        f"{s['optimizer']} lr={s['lr']:g}, {s['seeds']} seeds",
        fontsize=10,
    )
    fig.tight_layout()
    try:
        with atomic_output(path, force, binary=True) as fh:  # no partial PNG on error or Ctrl-C
            fig.savefig(fh, format="png", dpi=110)
    finally:
        plt.close(fig)
