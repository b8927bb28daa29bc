"""Training real batch-normalized networks (paper Fig 2 and Fig 4) and measuring gradient growth.

The network is the one of ``docs/theory.md``, fully connected, width ``N``, ``depth`` BN layers:

    x^0 = input (64 pixels),   h^l = W^l x^{l-1},   x^l = phi(gamma * BN(h^l) + beta),
    logits = W^out x^depth + b^out,   loss = softmax cross-entropy,

with ``W^l ~ N(0, sigma_w^2 / fan_in)``, ``sigma_w = 1`` (BN removes the weight scale), per-unit
BN over the batch ``BN(h) = (h - mean) / sqrt(var + eps)`` with the biased variance (for eps = 0
this is ``n(G h)`` of the theory), and BN's gamma, beta per unit, initialised to the given
values and trained with the weights. The pre-BN bias is omitted (BN removes it). With
gamma = 1, beta = 0, eps = 0 and phi = ReLU this is the network of Thm 3.10; general gamma,
beta correspond to the theory's activation ``phi(gamma x + beta)``.

Test-time BN uses the exact population statistics of the *training set* (each layer's mean and
variance over all training samples, computed layer by layer), not a running average.

Dataset: scikit-learn's ``digits`` (1797 8x8 images, 10 classes, chance accuracy 0.1), shipped
inside scikit-learn, so nothing is downloaded. JAX is imported lazily (only when training).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from symbnmf._errors import SymbnmfError

__all__ = [
    "Dataset",
    "GradientGrowth",
    "TrainConfig",
    "TrainResult",
    "gradient_growth",
    "load_digits",
    "max_trainable_depth",
    "train_network",
    "train_networks",
]


class DependencyError(SymbnmfError):
    """An optional dependency (the ``train`` extra) is missing."""


OPTIMIZERS = ("sgd", "rmsprop")


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dataset:
    """A classification data set as float32 numpy arrays (features standardised on the train split)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def chance(self) -> float:
        """Accuracy of always predicting the most frequent test class."""
        return float(np.bincount(self.y_test, minlength=self.n_classes).max() / len(self.y_test))


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's handwritten digits (1797 samples, 64 features, 10 classes), split and standardised.

    * ``test_fraction``: share of the samples held out for testing (a seeded permutation).
    * Features are standardised with the train split's mean and standard deviation (constant
      pixels are left at 0).
    """
    if not 0.0 < test_fraction < 1.0:
        raise SymbnmfError(f"test_fraction must be in (0, 1), got {test_fraction}; use e.g. 0.25")
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError:
        raise DependencyError(
            "training needs scikit-learn (for its bundled digits data set); install it with "
            "`pip install 'symbnmf[train]'` or `pip install scikit-learn`"
        ) from None
    d = _sk_load_digits()
    xs = np.asarray(d.data, dtype=np.float64)
    ys = np.asarray(d.target, dtype=np.int32)
    perm = np.random.default_rng(seed).permutation(len(ys))
    n_test = round(test_fraction * len(ys))
    te, tr = perm[:n_test], perm[n_test:]
    mu = xs[tr].mean(axis=0)
    sd = xs[tr].std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    norm = lambda a: ((a - mu) / sd).astype(np.float32)
    return Dataset("digits", norm(xs[tr]), ys[tr], norm(xs[te]), ys[te], int(ys.max()) + 1)


# ---------------------------------------------------------------------------------------------
# configuration and results
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    * ``depth``: number of BN layers (>= 1); ``width``: units per layer (N).
    * ``batch_size``: B, the batch over which BN normalises (>= 2; B = 2, 3 are outside the
      theory but trainable in practice).
    * ``steps``: a fixed budget of optimiser steps; ``lr``: learning rate;
      ``optimizer``: ``"sgd"`` or ``"rmsprop"`` (decay 0.9).
    * ``activation``: a spec for :func:`symbnmf.get_activation` (parameters bound).
    * ``gamma``, ``beta``, ``eps``: BN's initial gain and shift, and the variance offset.
    """

    depth: int
    batch_size: int
    width: int = 128
    steps: int = 500
    lr: float = 0.05
    optimizer: str = "sgd"
    activation: str = "relu"
    gamma: float = 1.0
    beta: float = 0.0
    eps: float = 0.0
    seed: int = 0

    def validate(self) -> TrainConfig:
        if int(self.depth) != self.depth or self.depth < 1:
            raise SymbnmfError(f"depth must be an integer >= 1, got {self.depth!r}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 2:
            raise SymbnmfError(
                f"batch size must be an integer >= 2 for training (BN needs 2 samples), got {self.batch_size!r}"
            )
        if int(self.width) != self.width or self.width < 1:
            raise SymbnmfError(f"width must be an integer >= 1, got {self.width!r}")
        if int(self.steps) != self.steps or self.steps < 1:
            raise SymbnmfError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SymbnmfError(f"learning rate must be positive, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise SymbnmfError(f"unknown optimizer {self.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise SymbnmfError(f"BN eps must be >= 0, got {self.eps!r}")
        if not (math.isfinite(self.gamma) and math.isfinite(self.beta)):
            raise SymbnmfError("BN gamma and beta must be finite numbers")
        return self


@dataclass
class TrainResult:
    """Outcome of one run: accuracies on the test/train splits, final mean training loss."""

    config: TrainConfig
    test_accuracy: float
    train_accuracy: float
    final_loss: float
    diverged: bool
    seconds: float

    def to_json(self) -> dict[str, Any]:
        d = asdict(self.config)
        d.update(
            test_accuracy=self.test_accuracy,
            train_accuracy=self.train_accuracy,
            final_loss=self.final_loss if math.isfinite(self.final_loss) else None,
            diverged=self.diverged,
            seconds=round(self.seconds, 3),
        )
        return d


# ---------------------------------------------------------------------------------------------
# the network (JAX, imported lazily)
# ---------------------------------------------------------------------------------------------
def _phi(activation: str) -> Callable[[Any], Any]:
    from symbnmf._activations import get_activation

    act = get_activation(activation)
    return act.numeric("jax")


def _init_params(key: Any, d_in: int, width: int, depth: int, n_out: int, gamma: float, beta: float) -> dict:
    import jax
    import jax.numpy as jnp

    k0, k1, k2 = jax.random.split(key, 3)
    f32 = jnp.float32
    return {
        "w_in": jax.random.normal(k0, (d_in, width), f32) / math.sqrt(d_in),
        "w": jax.random.normal(k1, (depth - 1, width, width), f32) / math.sqrt(width),
        "gamma": jnp.full((depth, width), gamma, f32),
        "beta": jnp.full((depth, width), beta, f32),
        "w_out": jax.random.normal(k2, (width, n_out), f32) / math.sqrt(width),
        "b_out": jnp.zeros((n_out,), f32),
    }


def _make_forward(phi: Callable, eps: float, remat: bool = False) -> Callable:
    """forward(params, x, perturb=None, stats=None) -> (logits, per-layer (mean, var)).

    ``perturb`` (depth, B, N) is added to each x^l, so d loss/d perturb = d loss/d x^l.
    ``stats`` (means, vars) of shape (depth, N) replace the batch statistics (test mode).
    ``remat``: every layer is ``jax.checkpoint``-ed, so a backward pass stores only the layer
    inputs and recomputes each layer's intermediates (memory ~ depth B N instead of ~8 depth B N;
    the same numbers up to float32 rounding).
    """
    import jax
    import jax.numpy as jnp

    def bn_act(h, g, b, stat):
        if stat is None:
            mean = jnp.mean(h, axis=0)
            var = jnp.mean(jnp.square(h - mean), axis=0)
        else:
            mean, var = stat
        z = (h - mean) * jax.lax.rsqrt(var + eps)
        return phi(g * z + b), (mean, var)

    def first(x, w, g, b, stat):
        return bn_act(x @ w, g, b, stat)

    if remat:
        first = jax.checkpoint(first)

    def forward(params, x, perturb=None, stats=None):
        depth = params["gamma"].shape[0]
        s0 = None if stats is None else (stats[0][0], stats[1][0])
        x, st0 = first(x, params["w_in"], params["gamma"][0], params["beta"][0], s0)
        if perturb is not None:
            x = x + perturb[0]
        if depth > 1:
            xs = {"w": params["w"], "g": params["gamma"][1:], "b": params["beta"][1:]}
            if perturb is not None:
                xs["p"] = perturb[1:]
            if stats is not None:
                xs["m"], xs["v"] = stats[0][1:], stats[1][1:]

            def body(x, s):
                st = None if stats is None else (s["m"], s["v"])
                y, st = bn_act(x @ s["w"], s["g"], s["b"], st)
                if perturb is not None:
                    y = y + s["p"]
                return y, st

            if remat:
                body = jax.checkpoint(body)
            x, (ms, vs) = jax.lax.scan(body, x, xs)
            means = jnp.concatenate([st0[0][None], ms])
            varis = jnp.concatenate([st0[1][None], vs])
        else:
            means, varis = st0[0][None], st0[1][None]
        return x @ params["w_out"] + params["b_out"], (means, varis)

    return forward


def _xent(logits, y):
    import jax
    import jax.numpy as jnp

    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _batch_schedule(n: int, batch: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """(steps, batch) indices: epochs of seeded permutations, each batch without repeats."""
    per_epoch = n // batch
    epochs = -(-steps // per_epoch)
    rows = [rng.permutation(n)[: per_epoch * batch].reshape(per_epoch, batch) for _ in range(epochs)]
    return np.concatenate(rows)[:steps].astype(np.int32)


def optimizer_update(optimizer: str, params: Any, state: Any, grads: Any, lr: Any) -> tuple[Any, Any]:
    """One optimiser step on a parameter pytree: ``(new params, new state)``.

    * ``"sgd"``: ``p <- p - lr * g`` (the state is passed through unchanged);
    * ``"rmsprop"``: ``s <- 0.9 s + 0.1 g^2``, ``p <- p - lr * g / (sqrt(s) + 1e-8)`` (state starts at 0).
    """
    import jax
    import jax.numpy as jnp

    tm = jax.tree_util.tree_map
    if optimizer == "sgd":
        return tm(lambda a, da: a - lr * da, params, grads), state
    if optimizer == "rmsprop":
        state = tm(lambda s, da: 0.9 * s + 0.1 * da * da, state, grads)
        return tm(lambda a, da, s: a - lr * da / (jnp.sqrt(s) + 1e-8), params, grads, state), state
    raise SymbnmfError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")


_COMPILED: dict[tuple, Any] = {}


def _compiled_trainer(activation: str, eps: float, optimizer: str, remat: bool = False) -> tuple[Callable, Callable]:
    key = (activation, float(eps), optimizer, bool(remat))
    if key in _COMPILED:
        return _COMPILED[key]
    import jax
    import jax.numpy as jnp

    forward = _make_forward(_phi(activation), eps, remat=remat)

    def loss_fn(params, xb, yb):
        logits, _ = forward(params, xb)
        return _xent(logits, yb)

    grad_fn = jax.value_and_grad(loss_fn)

    def train(params, x_train, y_train, idx, lr):
        opt0 = jax.tree_util.tree_map(jnp.zeros_like, params)

        def step(carry, ib):
            p, v = carry
            loss, g = grad_fn(p, x_train[ib], y_train[ib])
            p, v = optimizer_update(optimizer, p, v, g, lr)
            return (p, v), loss

        (p, _), losses = jax.lax.scan(step, (params, opt0), idx)
        return p, losses

    evaluate = _make_evaluate(forward)
    fns = (jax.jit(train), jax.jit(evaluate))
    _COMPILED[key] = fns
    return fns


def _make_evaluate(forward: Callable) -> Callable:
    import jax.numpy as jnp

    def evaluate(params, x_train, y_train, x_test, y_test):
        _, stats = forward(params, x_train)  # population statistics of the training set
        acc = []
        for xs, ys in ((x_test, y_test), (x_train, y_train)):
            logits, _ = forward(params, xs, stats=stats)
            acc.append(jnp.mean(jnp.argmax(logits, axis=1) == ys))
        return acc[0], acc[1]

    return evaluate


def bytes_per_network(config: TrainConfig, dataset: Dataset | None = None, remat: bool = False) -> int:
    """Upper estimate of one network's working memory in a call of :func:`train_networks` (bytes; float32).

    Parameters, gradients, optimiser state and updated parameters
    (:data:`symbnmf.experiments._memory.PARAM_COPIES_TRAIN` copies), the activations one step's backward
    pass stores (all of them, or with ``remat`` the layer inputs), the batch schedule and the
    per-step losses, and the evaluation on the training and test sets (checked against XLA's
    ``memory_analysis`` in the tests).
    """
    from symbnmf.experiments import _memory as M

    d_in, n_out, n_eval = (64, 10, 1347) if dataset is None else _shape(dataset)
    c = config
    P = M.n_params(d_in, c.width, c.depth, n_out)
    return (
        M.PARAM_COPIES_TRAIN * M.F32 * P
        + M.step_bytes(d_in, c.width, c.depth, n_out, c.batch_size, remat)
        + M.eval_bytes(d_in, c.width, n_out, n_eval)
        + M.F32 * c.steps * (c.batch_size + 1)
    )


def _shape(ds: Dataset) -> tuple[int, int, int]:
    return ds.x_train.shape[1], ds.n_classes, max(len(ds.y_train), len(ds.y_test))


def plan_training(
    dataset: Dataset | None,
    config: TrainConfig,
    networks: int,
    *,
    memory_bytes: int | None = None,
    devices: int = 1,
    chunk: int | None = None,
) -> Any:
    """The :class:`symbnmf.experiments._memory.MemoryPlan` of :func:`train_networks` for ``networks`` seeds."""
    from symbnmf.experiments import _memory as M

    shared = 0
    if dataset is not None:
        shared = sum(a.nbytes for a in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test))
    return M.plan_networks(
        networks,
        lambda remat: bytes_per_network(config, dataset, remat),
        kept_per_network=8 * (config.steps + 2),
        shared_bytes=shared,
        memory_bytes=memory_bytes,
        devices=devices,
        chunk=chunk,
    )


def train_network(dataset: Dataset, config: TrainConfig, *, memory_bytes: int | None = None) -> TrainResult:
    """Train one BN network from its random initialisation for ``config.steps`` steps; return accuracies.

    Mini-batches of ``config.batch_size`` are drawn by seeded epoch permutations; BN uses the
    mini-batch statistics in training and the training set's population statistics at test time.
    A run whose loss becomes non-finite is reported as ``diverged`` (its accuracies are still
    those of the final parameters, typically chance). When the network's estimated working set
    exceeds ``memory_bytes`` (default: a quarter of the available RAM, at most 1 GiB), every layer
    is rematerialised in the backward pass (``jax.checkpoint``; float32 rounding only).
    """
    import jax
    import jax.numpy as jnp

    from symbnmf.experiments._memory import check_available, check_budget

    cfg = config.validate()
    memory_bytes = check_budget(memory_bytes)
    if cfg.batch_size > len(dataset.y_train):
        raise SymbnmfError(
            f"batch size {cfg.batch_size} exceeds the {len(dataset.y_train)} training samples; use a smaller one"
        )
    plan = plan_training(dataset, cfg, 1, memory_bytes=memory_bytes)
    check_available(plan, "this training run")
    t0 = time.perf_counter()
    train, evaluate = _compiled_trainer(cfg.activation, cfg.eps, cfg.optimizer, plan.remat)
    key = jax.random.PRNGKey(cfg.seed)
    params = _init_params(key, dataset.x_train.shape[1], cfg.width, cfg.depth, dataset.n_classes, cfg.gamma, cfg.beta)
    idx = _batch_schedule(len(dataset.y_train), cfg.batch_size, cfg.steps, np.random.default_rng(cfg.seed))
    xtr, ytr = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    xte, yte = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
    params, losses = train(params, xtr, ytr, jnp.asarray(idx), jnp.float32(cfg.lr))
    test_acc, train_acc = evaluate(params, xtr, ytr, xte, yte)
    losses = np.asarray(losses)
    tail = losses[-max(1, len(losses) // 10) :]
    diverged = not bool(np.all(np.isfinite(losses)))
    return TrainResult(cfg, float(test_acc), float(train_acc), float(np.mean(tail)), diverged, time.perf_counter() - t0)


def _chunk_trainer(cfg: TrainConfig, d_in: int, n_out: int, remat: bool) -> Callable:
    """jit(vmap over networks) of init + training + evaluation of one network: returns only its
    per-step losses and its test and train accuracies (the parameters never leave the call)."""
    key = ("chunk", cfg.activation, float(cfg.eps), cfg.optimizer, bool(remat), d_in, cfg.width, cfg.depth, n_out)
    if key not in _COMPILED:
        import jax

        train, _ = _compiled_trainer(cfg.activation, cfg.eps, cfg.optimizer, remat)
        evaluate = _make_evaluate(_make_forward(_phi(cfg.activation), cfg.eps))
        width, depth = cfg.width, cfg.depth

        def one(rng_key, idx, gamma, beta, x_train, y_train, x_test, y_test, lr):
            params = _init_params(rng_key, d_in, width, depth, n_out, gamma, beta)
            params, losses = train(params, x_train, y_train, idx, lr)
            test_acc, train_acc = evaluate(params, x_train, y_train, x_test, y_test)
            return losses, test_acc, train_acc

        _COMPILED[key] = jax.jit(jax.vmap(one, in_axes=(0, 0, None, None, None, None, None, None, None)))
    return _COMPILED[key]


def train_networks(
    dataset: Dataset,
    config: TrainConfig,
    seeds: Sequence[int],
    *,
    devices: Any = None,
    memory_bytes: int | None = None,
) -> list[TrainResult]:
    """Train one network per seed of ``seeds`` (``config`` otherwise shared), batched and sharded.

    Network ``s`` is the network :func:`train_network` trains with ``config.seed = s`` (same
    initial weights ``PRNGKey(s)``, same batch schedule); the networks are vmapped, and their
    axis is sharded over ``devices`` (default: all JAX devices), so a GPU or a multi-device host
    runs them in parallel. Memory is bounded by ``memory_bytes`` (default: a quarter of the
    available RAM, at most 1 GiB): the seeds run in calls of a width that fits it
    (:func:`plan_training`; the last call is padded with repeats of the last seed, discarded),
    each call returning only its networks' losses and accuracies; when one network per device
    does not fit, every layer is rematerialised (``jax.checkpoint``). Results agree with
    :func:`train_network` up to float32 rounding (batched matrix products may round
    differently); a network's results are bit-identical at the same call width (8 per device, fewer
    for fewer seeds or a small budget), equal to float32 rounding otherwise. ``seconds`` of
    each result is the wall time of all the calls.
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from symbnmf.experiments._memory import check_available, resolve_budget

    cfg = config.validate()
    memory_bytes = resolve_budget(memory_bytes)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise SymbnmfError("no seeds given; pass at least one")
    if cfg.batch_size > len(dataset.y_train):
        raise SymbnmfError(
            f"batch size {cfg.batch_size} exceeds the {len(dataset.y_train)} training samples; use a smaller one"
        )
    devs = list(devices) if devices is not None else jax.devices()
    plan = plan_training(dataset, cfg, len(seeds), memory_bytes=memory_bytes, devices=len(devs))
    check_available(plan, "this training run")
    t0 = time.perf_counter()
    size = plan.chunk
    padded = seeds + [seeds[-1]] * (plan.chunk * plan.nchunks - len(seeds))
    sharding = NamedSharding(Mesh(np.array(devs), ("nets",)), PartitionSpec("nets"))
    d_in, n = dataset.x_train.shape[1], len(dataset.y_train)
    fn = _chunk_trainer(cfg, d_in, dataset.n_classes, plan.remat)
    xtr, ytr = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    xte, yte = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
    f32 = jnp.float32
    S = len(seeds)
    losses = np.empty((S, cfg.steps), np.float32)
    test_acc, train_acc = np.empty(S), np.empty(S)

    def collect(lo: int, res: tuple) -> None:
        k = min(size, S - lo)
        ls, te, tr = (np.asarray(a)[:k] for a in res)
        losses[lo : lo + k], test_acc[lo : lo + k], train_acc[lo : lo + k] = ls, te, tr

    pending = None  # dispatch call c+1 before copying call c's results to the host
    for c in range(plan.nchunks):
        ids = padded[c * size : (c + 1) * size]
        keys = np.stack([np.asarray(jax.random.PRNGKey(s)) for s in ids])
        idx = np.stack([_batch_schedule(n, cfg.batch_size, cfg.steps, np.random.default_rng(s)) for s in ids])
        res = fn(
            jax.device_put(keys, sharding),
            jax.device_put(idx, sharding),
            f32(cfg.gamma),
            f32(cfg.beta),
            xtr,
            ytr,
            xte,
            yte,
            f32(cfg.lr),
        )
        if pending is not None:
            collect(*pending)
        pending = (c * size, res)
    if pending is not None:
        collect(*pending)
    dt = time.perf_counter() - t0
    out = []
    for i, s in enumerate(seeds):
        tail = losses[i, -max(1, losses.shape[1] // 10) :]
        diverged = not bool(np.all(np.isfinite(losses[i])))
        cs = replace(cfg, seed=s)
        out.append(TrainResult(cs, float(test_acc[i]), float(train_acc[i]), float(np.mean(tail)), diverged, dt))
    return out


# ---------------------------------------------------------------------------------------------
# gradient growth at initialisation (the quantity lambda_down_G predicts)
# ---------------------------------------------------------------------------------------------
@dataclass
class GradientGrowth:
    """Per-layer log of the mean squared gradient norm at initialisation and its fitted growth rate.

    * ``log_mean_sq[l]`` = ln mean over networks of ||d loss/d x^{l+1}||^2 (l = 0 .. depth-1);
    * ``rate`` = exp(-slope) of a least-squares line through ``log_mean_sq`` on the layers
      ``fit_layers`` (1-based, inclusive): the per-layer growth factor of the squared gradient,
      going from the output towards the input, to compare with backward.G (docs/theory.md);
    * ``rate_se``: bootstrap standard error over networks.
    """

    batch_size: int
    depth: int
    width: int
    n_networks: int
    log_mean_sq: list[float]
    fit_layers: tuple[int, int]
    rate: float
    rate_se: float
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _fit_rate(log_sq: np.ndarray, lo: int, hi: int) -> float:
    ls = np.arange(lo, hi + 1)
    slope = np.polyfit(ls, log_sq[lo - 1 : hi], 1)[0]
    return float(np.exp(-slope))


def gradient_growth(
    batch_size: int,
    *,
    activation: str = "relu",
    gamma: float = 1.0,
    beta: float = 0.0,
    eps: float = 0.0,
    depth: int = 32,
    width: int = 256,
    n_networks: int = 64,
    fit_layers: tuple[int, int] | None = None,
    dataset: Dataset | None = None,
    seed: int = 0,
    chunk: int | None = None,
    memory_bytes: int | None = None,
) -> GradientGrowth:
    """Measure the per-layer growth of ||d loss/d x^l||^2 in freshly initialised networks (dense W).

    The network is the training network of this module at initialisation, fed one batch of
    ``batch_size`` digits images per network (distinct per network), with the cross-entropy
    loss. ``rate`` estimates backward.G = lambda_down_G of Thm 3.9/3.10 (gradient-independence
    mean field limit) from the log of the *mean* over networks (docs/theory.md: small batches are
    heavy-tailed; the mean of logs is biased). Default fit window: layers
    [depth//4 + 1, depth - 4], away from the input (forward not yet at the BSB1 fixed point)
    and the output (non-G components not yet decayed). This is a minimal in-training
    measurement, not a general simulator (see :mod:`symbnmf.montecarlo.networks`).

    The networks run in calls planned from ``memory_bytes`` (default: a quarter of the available
    RAM, at most 1 GiB; ``chunk`` forces the networks per call), each returning only the
    per-layer squared norms; network k's initial weights (``split(PRNGKey(seed + 7919),
    n_networks)[k]``) and batch (the k-th draw of ``default_rng(seed)``) do not depend on the
    chunking. ``extra["memory"]`` records the plan.
    """
    import jax
    import jax.numpy as jnp

    from symbnmf.experiments import _memory as M

    memory_bytes = M.check_budget(memory_bytes)
    TrainConfig(  # validates the arguments
        depth=depth,
        batch_size=batch_size,
        width=width,
        activation=activation,
        gamma=gamma,
        beta=beta,
        eps=eps,
        seed=seed,
    ).validate()
    if isinstance(n_networks, bool) or int(n_networks) != n_networks or n_networks < 2:
        raise SymbnmfError(f"need at least 2 networks for an error bar, got {n_networks}")
    lo, hi = fit_layers if fit_layers is not None else (depth // 4 + 1, depth - 4)
    if not (1 <= lo < hi <= depth):
        raise SymbnmfError(f"fit window {lo}..{hi} must satisfy 1 <= lo < hi <= depth={depth}; use a deeper network")
    ds = dataset if dataset is not None else load_digits()
    d_in, n_out = ds.x_train.shape[1], ds.n_classes
    P = M.n_params(d_in, width, depth, n_out)
    plan = M.plan_networks(
        int(n_networks),
        lambda remat: M.F32 * P + M.step_bytes(d_in, width, depth, n_out, batch_size, remat, perturb=True),
        kept_per_network=8 * depth,
        memory_bytes=memory_bytes,
        chunk=chunk,
    )
    forward = _make_forward(_phi(activation), eps, remat=plan.remat)

    def sq_norms(key, xb, yb):
        params = _init_params(key, ds.x_train.shape[1], width, depth, ds.n_classes, gamma, beta)
        pert = jnp.zeros((depth, batch_size, width), jnp.float32)

        def loss(p):
            logits, _ = forward(params, xb, perturb=p)
            return _xent(logits, yb)

        g = jax.grad(loss)(pert)
        return jnp.sum(jnp.square(g), axis=(1, 2))

    fn = jax.jit(jax.vmap(sq_norms))
    rng = np.random.default_rng(seed)
    size, n_padded = plan.chunk, plan.chunk * plan.nchunks  # equal calls: one compilation
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(seed + 7919), n_networks))
    n = len(ds.y_train)
    batches = np.stack([rng.choice(n, batch_size, replace=False) for _ in range(n_networks)])
    keys = np.concatenate([keys, np.repeat(keys[-1:], n_padded - n_networks, axis=0)])  # padding, dropped
    batches = np.concatenate([batches, np.repeat(batches[-1:], n_padded - n_networks, axis=0)])
    sq = np.empty((n_networks, depth))
    for s in range(0, n_padded, size):
        idx = batches[s : s + size]
        res = np.asarray(
            fn(jnp.asarray(keys[s : s + size]), jnp.asarray(ds.x_train[idx]), jnp.asarray(ds.y_train[idx]))
        )
        k = min(size, n_networks - s)
        sq[s : s + k] = res[:k]

    # log of the mean, computed with a per-layer scale to avoid overflow in float32 sums
    def log_mean(a):
        m = a.max(axis=0)
        return np.log(np.mean(a / m, axis=0)) + np.log(m)

    lm = log_mean(sq)
    rate = _fit_rate(lm, lo, hi)
    boots = []
    brng = np.random.default_rng(seed + 1)
    for _ in range(200):
        pick = brng.integers(0, n_networks, n_networks)
        boots.append(_fit_rate(log_mean(sq[pick]), lo, hi))
    return GradientGrowth(
        batch_size,
        depth,
        width,
        n_networks,
        [float(v) for v in lm],
        (lo, hi),
        rate,
        float(np.std(boots)),
        {"activation": activation, "gamma": gamma, "beta": beta, "eps": eps, "seed": seed, "memory": plan.to_json()},
    )


# ---------------------------------------------------------------------------------------------
# summarising a depth sweep
# ---------------------------------------------------------------------------------------------
def max_trainable_depth(depths: Sequence[int], accuracies: Sequence[float], threshold: float) -> dict[str, Any]:
    """Bracket the depth where accuracy falls to chance along one sweep.

    Returns ``{"last_trainable", "first_untrainable", "estimate"}``: the largest grid depth
    such that every depth up to it reaches ``threshold`` accuracy, the next grid depth (None if
    the whole grid trains), and their geometric mean as a point estimate (the grid depth itself
    when the bracket is open). ``last_trainable`` is None when even the shallowest depth fails.
    """
    order = np.argsort(depths)
    ds = [int(depths[i]) for i in order]
    acc = [float(accuracies[i]) for i in order]
    last = None
    first_bad = None
    for d, a in zip(ds, acc):
        if a >= threshold:
            last = d
        else:
            first_bad = d
            break
    if last is None:
        est = None
    elif first_bad is None:
        est = float(last)
    else:
        est = float(math.sqrt(last * first_bad))
    return {"last_trainable": last, "first_untrainable": first_bad, "estimate": est}
