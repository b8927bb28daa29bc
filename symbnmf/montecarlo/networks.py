"""Monte Carlo of finite-width batch-normalized networks in JAX, measured against the theory.

:func:`simulate` runs K independent networks h^l = W^l x^{l-1} + b^l, x^l = φ(γ BN(h^l) + β)
(width N, batch B, depth L, W ~ N(0, 1/N) by default; docs/theory.md conventions), with a random
linear readout loss = Σ R ⊙ x^L, and measures per layer

* the batch covariance Σ^l = x^lᵀ x^l / N, its scale μ_l = tr(GΣG)/(B−1) and the distance of
  GΣG/μ_l to the BSB1 fixed point G, split into the L and M pieces (Thm 3.6; the G piece is
  reported as the relative deviation of the scale from μ*);
* ‖∂loss/∂x^l‖² and ‖∂loss/∂W^l‖² by true backpropagation (``jax.grad``; no
  gradient-independence shortcut);

fits the per-layer growth factor of the mean squared gradient norm (comparable to λ↓_G,
Thm 3.9/3.10; App. L for weight gradients) with a jackknife standard error over networks and
puts every measured figure beside the theory value from :func:`symbnmf.evaluate` and a z-score.
JAX is imported only when a simulation runs, SymPy only when the activation must be resolved: a
simulation named by a string that ran before reads what SymPy produced for it (label, the key of
φ, the theory column) from an authenticated record (:func:`symbnmf.fast._compile_cache.load_resolved`)
and, with its program in the executable cache, never builds φ.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from symbnmf._conventions import check_batch_size
from symbnmf._errors import SymbnmfError
from symbnmf.montecarlo.stats import fit_rate, mean_se, zscore

if TYPE_CHECKING:
    from symbnmf._activations import Activation

WEIGHT_LAWS = ("gaussian", "orthogonal", "rademacher")
METHODS = ("auto", "fast", "dense")
INITS = ("fixed_point", "iid", "structured")
DTYPES = ("float32", "float64")


class MonteCarloError(SymbnmfError):
    """Bad Monte Carlo settings (width, depth, networks, weight law, dtype, ...)."""


@dataclass
class SimulationResult:
    """Per-network, per-layer measurements and their summary against the theory.

    Arrays (leading axis = networks, simulation dtype): ``grad_x`` (K, L+1) ‖∂loss/∂x^l‖²,
    l = 0..L; ``grad_w`` (K, L) ‖∂loss/∂W^l‖², l = 1..L; ``stats`` (K, L+1, 5) per-layer
    statistics of the batch covariances Σ^l, named by ``stat_names`` (diag, offdiag, mu, L, M:
    :func:`symbnmf.montecarlo.run.cov_stats`); ``cov`` (K, L+1, B, B) the covariances themselves,
    only when ``simulate(..., keep_cov=True)`` (else None: memory stays bounded).
    ``summary`` is the JSON-ready dict printed by ``symbnmf simulate --json``.
    """

    settings: dict[str, Any]
    grad_x: np.ndarray | None
    grad_w: np.ndarray | None
    stats: np.ndarray
    cov: np.ndarray | None
    theory: dict[str, Any] | None
    theory_reason: str | None
    summary: dict[str, Any] = field(default_factory=dict)
    stat_names: tuple[str, ...] = ("diag", "offdiag", "mu", "L", "M")

    def stat(self, name: str) -> np.ndarray:
        """(K, L+1) array of one covariance statistic (see ``stat_names``)."""
        return self.stats[..., self.stat_names.index(name)]

    def to_json(self) -> dict[str, Any]:
        return self.summary


def _composite_activation(act: Activation, gamma: float, beta: float) -> Activation:
    """φ(γ x + β): BN's γ, β absorbed into the activation (docs/theory.md conventions)."""
    if gamma == 1 and beta == 0:
        return act
    import sympy as sp

    from symbnmf._activations import Activation
    from symbnmf._activations import x as _x

    expr = act.bound_expr.subs(_x, sp.nsimplify(gamma, rational=True) * _x + sp.nsimplify(beta, rational=True))
    return Activation(f"{act.label} with BN gamma={gamma:g}, beta={beta:g}", expr)


def _require_nondegenerate(act: Activation, gamma: float, beta: float, backward: bool) -> None:
    """Refuse a degenerate composite φ(γx + β) (e.g. γ = 0: every layer's output is constant)."""
    why = _composite_activation(act, float(gamma), float(beta)).degeneracy
    if why is None or (not backward and "phi' = 0" in why):  # a step phi still has a forward pass
        return
    fix = "use --gamma != 0 (BN's scale)" if gamma == 0 else "choose another phi, --gamma or --beta"
    raise MonteCarloError(f"phi(gamma*x + beta) with gamma={gamma:g}, beta={beta:g} is degenerate: {why}; {fix}")


def theory_values(
    act: Activation, B: int, *, gamma: float = 1.0, beta: float = 0.0, eps: float = 0.0
) -> tuple[dict | None, str | None]:
    """Theory record ``symbnmf.evaluate(φ(γx+β), [B])[0]`` or ``(None, reason)`` if unavailable.

    Method: closed form when φ has one, else ``"fast"`` (JAX quadrature), else ``"quadrature"``.
    """
    if B < 4:
        if B == 2:
            return (
                None,
                "B=2 is outside the theory: BN(h) = ±(1,-1) per unit, so every gradient below the readout vanishes (App. J)",
            )
        return None, f"B={B} is outside the theory (needs B >= 4; App. J conjectures B=3 behaves like B=4)"
    if eps != 0:
        return _theory_values_eps(act, B, gamma=gamma, beta=beta, eps=eps)
    try:
        import symbnmf

        evaluate = getattr(symbnmf, "evaluate", None)
        if evaluate is None:
            return None, "symbnmf.evaluate is not available in this build"
        comp = _composite_activation(act, gamma, beta)
        # Closed forms when derived; otherwise the JAX quadrature (far more precise than any
        # Monte Carlo standard error), falling back to the certified mpmath quadrature.
        if comp.has_closed_form:
            return evaluate(comp, [B], method="closed-form")[0], None
        from symbnmf._evaluate import evaluate_fast_or_quadrature

        return evaluate_fast_or_quadrature(comp, [B])[0][0], None
    except SymbnmfError as exc:
        return None, f"no theory value: {exc}"
    except Exception as exc:
        return None, f"{_UNEXPECTED}{type(exc).__name__}: {exc})"


#: How the reason of a theory value that failed unexpectedly begins (perhaps a passing failure:
#: such a reason is never kept in a resolved-simulation record).
_UNEXPECTED = "no theory value ("


def _theory_values_eps(
    act: Activation, B: int, *, gamma: float, beta: float, eps: float
) -> tuple[dict | None, str | None]:
    """The eps > 0 theory (issue 12) at the simulator's conventions: sigma_w^2 = 1, BN with the
    biased variance and eps inside the square root (:func:`symbnmf.montecarlo.layers.batch_norm`),
    x = phi(gamma BN(h) + beta); sigma_b drops out of BN. The record's ``fixed_point`` is the
    covariance of x (= the next pre-activation covariance at sigma_w^2 = 1, sigma_b = 0), as the
    simulator measures; it gains ``phase`` ("bsb1" | "collapsed"). Fast JAX path, else mpmath."""
    from symbnmf._evaluate import evaluate_fast_or_quadrature

    kw: dict[str, Any] = {"eps": float(eps), "weight_var": 1.0, "gamma": float(gamma), "beta": float(beta)}
    try:
        return evaluate_fast_or_quadrature(act, [B], **kw)[0][0], None
    except SymbnmfError as exc:
        return None, f"no theory value: {exc}"
    except Exception as exc:
        return None, f"{_UNEXPECTED}{type(exc).__name__}: {exc})"


def _f(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _list(values: np.ndarray) -> list[float | None]:
    """JSON-safe list: non-finite entries (log of an exactly zero gradient) become null."""
    return [_f(v) for v in np.asarray(values, dtype=np.float64)]


def _entry(
    measured: float | None, stderr: float | None, theory: float | None, reason: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "measured": _f(measured),
        "stderr": _f(stderr),
        "theory": _f(theory),
        "z": zscore(_f(measured), _f(stderr), _f(theory)),
    }
    if out["theory"] is None and reason:
        out["reason"] = reason
    return out


def default_fit_window(depth: int) -> tuple[int, int]:
    """Layers used for the rate fit: away from the input and from the readout."""
    trim = max(1, depth // 10)
    return trim, depth - trim


def _validate(
    B: Any,
    width: Any,
    depth: Any,
    networks: Any,
    weights: str,
    dtype: str,
    method: str,
    init: str,
    gamma: float,
    beta: float,
    eps: float,
    sigma_b: float,
    burn_in: int | None,
) -> tuple[int, int, int, int, str]:
    b = check_batch_size(B, minimum=2, what="Monte Carlo networks")
    for name, v, lo in (("width", width, 1), ("depth", depth, 1), ("networks", networks, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise MonteCarloError(f"{name} must be an integer >= {lo}, got {v!r}; e.g. --{name} {max(lo, 8)}")
    if weights not in WEIGHT_LAWS:
        raise MonteCarloError(f"unknown weight law {weights!r}; use one of {', '.join(WEIGHT_LAWS)}")
    if dtype not in DTYPES:
        raise MonteCarloError(f"unknown dtype {dtype!r}; use float32 or float64")
    if method not in METHODS:
        raise MonteCarloError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if init not in INITS:
        raise MonteCarloError(f"unknown init {init!r}; use one of {', '.join(INITS)}")
    if method == "fast" and weights != "gaussian":
        raise MonteCarloError(
            f"the fast exact sampler needs Gaussian weights; use --method dense for {weights} weights"
        )
    if not all(math.isfinite(float(v)) for v in (gamma, beta, eps, sigma_b)):
        raise MonteCarloError("gamma, beta, eps and sigma_b must be finite numbers")
    if eps < 0 or sigma_b < 0:
        raise MonteCarloError("eps and sigma_b must be >= 0")
    if burn_in is not None and (isinstance(burn_in, bool) or not isinstance(burn_in, (int, np.integer)) or burn_in < 0):
        raise MonteCarloError(f"burn_in must be an integer >= 0, got {burn_in!r}")
    resolved = method if method != "auto" else ("fast" if weights == "gaussian" else "dense")
    return b, int(width), int(depth), int(networks), resolved


_PHI_CACHE: dict[str, Any] = {}


def _act_key(act: Activation) -> str:
    """The name of φ in ``NetConfig.activation``: the ``srepr`` of the bound SymPy expression."""
    import sympy as sp

    return sp.srepr(act.bound_expr)


def _jax_phi(act: Activation):
    key = _act_key(act)
    if key not in _PHI_CACHE:
        _PHI_CACHE[key] = act.numeric("jax")
    return key, _PHI_CACHE[key]


def _deferred_phi(act: Activation) -> Any:
    """φ of ``act`` as JAX, built (printed from SymPy) only if its program must be compiled."""
    from symbnmf.montecarlo.run import DeferredPhi

    return DeferredPhi(lambda: _jax_phi(act)[1])


# ---------------------------------------------------------------------------------------------
# resolved simulations: what SymPy produced for a string activation, kept across processes
# ---------------------------------------------------------------------------------------------


@dataclass
class _Resolved:
    """The activation side of one simulation: from SymPy (``act`` set) or from a record (``act``
    None: SymPy not loaded). ``key`` is where a record is kept (None: not kept)."""

    label: str
    act_key: str
    phi: Any  # run.DeferredPhi
    act: Activation | None = None
    theory: tuple[dict | None, str | None] | None = None
    key: str | None = None


def _plain_json(v: Any) -> bool:
    """True when ``v`` is made of dicts with string keys, lists, str, int, finite float, bool and
    None only, so that it reads back from JSON equal and of the same types."""
    if v is None or type(v) in (str, int, bool):
        return True
    if type(v) is float:
        return math.isfinite(v)
    if type(v) is list:
        return all(_plain_json(e) for e in v)
    if type(v) is dict:
        return all(type(k) is str and _plain_json(e) for k, e in v.items())
    return False


def _resolved_key(
    activation: Any,
    params: Mapping[str, Any] | None,
    B: int,
    gamma: Any,
    beta: Any,
    eps: Any,
    backward: Any,
    theory: Any,
) -> str | None:
    """Key of the record of a string activation with these settings, or None (not kept: an
    :class:`Activation`, parameters that are not plain numbers)."""
    if not isinstance(activation, str):
        return None
    bound = dict(params or {})
    if not all(isinstance(k, str) and type(v) in (int, float) for k, v in bound.items()):
        return None
    from symbnmf.fast._compile_cache import resolved_key

    return resolved_key(
        {
            "activation": activation,
            "params": sorted(bound.items()),
            # every setting the nondegeneracy check, the theory column and NetConfig.activation depend on
            "batch_size": B,
            "gamma": float(gamma),
            "beta": float(beta),
            "eps": float(eps),
            "backward": bool(backward),
            "theory": bool(theory),
        }
    )


def _phi_from_record(rec: dict) -> Any:
    """φ of a record, for a compilation: the JAX source SymPy printed for it, executed again
    (:func:`symbnmf.fast._specfun.callable_from_source`; no SymPy)."""
    from symbnmf.fast._specfun import callable_from_source

    return callable_from_source(rec["phi_source"], rec["phi_helpers"], "jax")


def _resolve(
    activation: str | Activation,
    params: Mapping[str, Any] | None,
    B: int,
    gamma: float,
    beta: float,
    eps: float,
    backward: bool,
    theory: bool,
) -> _Resolved:
    """The activation of a simulation, checked (bound, not degenerate): from the record of a
    string activation that ran before with the same settings (no SymPy), else by SymPy."""
    from symbnmf.fast._compile_cache import load_resolved
    from symbnmf.montecarlo.run import DeferredPhi

    key = _resolved_key(activation, params, B, gamma, beta, eps, backward, theory)
    rec = load_resolved(key) if key is not None else None
    if rec is not None and _valid_record(rec, theory):
        act_key = rec["act_key"]
        th = (rec["theory"], rec["theory_reason"]) if theory else None
        phi = DeferredPhi(lambda: _phi_from_record(rec))
        return _Resolved(rec["label"], act_key, phi, theory=th)
    from symbnmf._activations import get_activation

    act = get_activation(activation, **dict(params or {}))
    act.require_bound()
    _require_nondegenerate(act, gamma, beta, backward)
    return _Resolved(act.label, _act_key(act), _deferred_phi(act), act=act, key=key)


def _valid_record(rec: dict, theory: bool) -> bool:
    ok = (
        rec.get("nondegenerate") is True
        and all(isinstance(rec.get(k), str) for k in ("label", "act_key", "phi_source"))
        and isinstance(rec.get("phi_helpers"), list)
        and all(isinstance(h, str) for h in rec["phi_helpers"])
    )
    if ok and theory:
        th, why = rec.get("theory", False), rec.get("theory_reason", False)
        ok = (isinstance(th, dict) and why is None) or (th is None and isinstance(why, str))
    return ok


def _keep_resolved(r: _Resolved, theory: tuple[dict | None, str | None] | None) -> None:
    """Keep what SymPy produced for ``r`` (after a successful simulation), unless the theory
    column failed unexpectedly or is not plain JSON."""
    if r.key is None or r.act is None:  # only what SymPy resolved is kept
        return
    if theory is not None:
        rec, why = theory
        if (why is not None and why.startswith(_UNEXPECTED)) or not _plain_json(rec):
            return
    from symbnmf._activations import x
    from symbnmf.fast._jaxprint import callable_source

    src, helpers = callable_source(r.act.bound_expr, (x,), "jax")
    record: dict[str, Any] = {
        "label": r.label,
        "act_key": r.act_key,
        "nondegenerate": True,
        "phi_source": src,  # phi as JAX code: a compilation needs no SymPy either
        "phi_helpers": list(helpers),
    }
    if theory is not None:
        record.update(theory=theory[0], theory_reason=theory[1])
    from symbnmf.fast._compile_cache import store_resolved

    store_resolved(r.key, record)


def _net_config(
    act_key: str,
    N: int,
    B: int,
    L: int,
    burn_in: Any,
    meth: str,
    weights: str,
    dtype: str,
    gamma: Any,
    beta: Any,
    eps: Any,
    sigma_b: Any,
    init: str,
    backward: Any,
    keep_cov: Any,
) -> Any:
    """The static configuration of one compiled network pass (the key of its compiled program)."""
    from symbnmf.montecarlo.run import NetConfig

    return NetConfig(
        N,
        B,
        L,
        int(burn_in),
        meth,
        weights,
        dtype,
        float(gamma),
        float(beta),
        float(eps),
        float(sigma_b),
        init,
        bool(backward),
        act_key,
        keep_cov=bool(keep_cov),
    )


def simulate(
    activation: str | Activation,
    batch_size: int,
    width: int,
    depth: int,
    networks: int,
    *,
    seed: int = 0,
    dtype: str = "float32",
    weights: str = "gaussian",
    method: str = "auto",
    gamma: float = 1.0,
    beta: float = 0.0,
    eps: float = 0.0,
    sigma_b: float = 0.0,
    burn_in: int | None = None,
    init: str = "fixed_point",
    fit_window: tuple[int, int] | None = None,
    backward: bool = True,
    theory: bool = True,
    progress: bool = False,
    chunk: int | None = None,
    memory_bytes: int | None = None,
    keep_cov: bool = False,
    devices: Sequence[Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> SimulationResult:
    """Simulate ``networks`` batch-normalized networks and compare with the mean field theory.

    Conventions: docs/theory.md (σ_w² = 1; BN per unit across the batch with γ, β, ε; γ and β are
    compared with the theory of φ(γx + β); ε > 0 is compared with the ε theory of issue 12).  The measured
    ``gradient_rate`` is the per-layer factor by which the *mean over networks* of
    ‖∂loss/∂x^l‖² grows towards the input, fitted on ``fit_window`` (default: depth/10 layers
    trimmed at both ends) — the Monte Carlo counterpart of λ↓_G (Thm 3.9, 3.10), with a
    delete-one jackknife standard error over networks.

    * ``activation``: name/expression/:class:`Activation` (parameters bound); ``params`` binds
      parameters as ``get_activation(activation, **params)`` does. A string activation that was
      simulated before with the same parameters, B, γ, β, ε, ``backward`` and ``theory`` is
      resolved from symbnmf's cache without SymPy (``SYMBNMF_NO_CACHE=1``: never).
    * ``batch_size`` B >= 2 (B = 2: gradients vanish exactly; B = 3 has no theory value).
    * ``width`` N, ``depth`` L (measured layers, after ``burn_in`` forward-only layers:
      default 5 for ``init="fixed_point"``, else 0), ``networks`` K, ``seed``.
    * ``weights``: ``"gaussian"``, ``"orthogonal"`` (Haar) or ``"rademacher"``;
      ``method``: ``"fast"`` (exact O(N·B²) sampler of Gaussian layers), ``"dense"``
      (N×N matrices; the reference), or ``"auto"`` (fast when Gaussian).
    * ``dtype``: ``"float32"`` or ``"float64"`` (x64 enabled for this call only).
    * ``init``: ``"fixed_point"`` (xᵀx/N = G), ``"iid"`` or ``"structured"`` (far from BSB1).
    * ``backward=False`` runs the forward pass only (covariances).
    * ``memory_bytes``: budget for the working memory of one chunk of networks (default: a
      quarter of the available RAM, at most 1 GiB; :func:`symbnmf.montecarlo.run.plan_chunks`);
      ``chunk`` forces the networks per chunk.  Results do not depend on either.
    * ``keep_cov``: also return the per-network covariances (K, L+1, B, B) (memory grows with K).
    * ``devices``: JAX devices to shard the networks over (default: all).

    Raises :class:`MonteCarloError` / :class:`~symbnmf._errors.BatchSizeError` on bad input.
    """
    t0 = time.perf_counter()
    B, N, L, K, meth = _validate(
        batch_size, width, depth, networks, weights, dtype, method, init, gamma, beta, eps, sigma_b, burn_in
    )
    r = _resolve(activation, params, B, gamma, beta, eps, backward, theory)
    if burn_in is None:
        burn_in = 5 if init == "fixed_point" else 0
    lo, hi = fit_window if fit_window is not None else default_fit_window(L)
    if not (0 <= lo < hi <= L):
        raise MonteCarloError(f"fit window {lo}..{hi} must satisfy 0 <= lo < hi <= depth={L}")

    import jax

    from symbnmf.montecarlo.run import plan_chunks, run_networks

    cfg = _net_config(
        r.act_key, N, B, L, burn_in, meth, weights, dtype, gamma, beta, eps, sigma_b, init, backward, keep_cov
    )
    if memory_bytes is not None and (
        isinstance(memory_bytes, bool) or not isinstance(memory_bytes, (int, np.integer)) or memory_bytes < 1
    ):
        raise MonteCarloError(f"memory budget must be a positive number of bytes, got {memory_bytes!r}")
    n_dev = len(devices) if devices is not None else jax.device_count()
    plan = plan_chunks(cfg, K, memory_bytes=memory_bytes, devices=n_dev)
    _check_memory(plan.peak_bytes, B, N, L, K)
    pending = None
    if theory and r.theory is None:  # computed while the networks run (XLA releases the GIL)
        from concurrent.futures import ThreadPoolExecutor

        from symbnmf.fast._compile_cache import init_runtime

        assert r.act is not None  # resolved by SymPy: a record brings its theory column
        # What JAX's CPU runtime imports (scipy.linalg, for LAPACK) is imported here first: the
        # theory's quadrature imports it too, and two threads importing it at once can deadlock.
        init_runtime()

        pool = ThreadPoolExecutor(1, thread_name_prefix="symbnmf-theory")
        pending = pool.submit(theory_values, r.act, B, gamma=gamma, beta=beta, eps=eps)
        pool.shutdown(wait=False)
    with jax.enable_x64(dtype == "float64"):
        raw = run_networks(
            cfg, r.phi, int(seed), K, chunk=chunk, memory_bytes=memory_bytes, progress=progress, devices=devices
        )

    if r.theory is not None:
        rec, reason = r.theory
    elif pending is not None:
        rec, reason = pending.result()
    else:
        rec, reason = None, "theory not requested"
    res = SimulationResult(
        settings={
            "activation": r.label,
            "batch_size": B,
            "width": N,
            "depth": L,
            "networks": K,
            "seed": int(seed),
            "dtype": dtype,
            "weights": weights,
            "method": meth,
            "gamma": float(gamma),
            "beta": float(beta),
            "eps": float(eps),
            "sigma_b": float(sigma_b),
            "burn_in": int(burn_in),
            "init": init,
            "fit_window": [lo, hi],
            "devices": n_dev,
        },
        grad_x=raw.get("grad_x"),
        grad_w=raw.get("grad_w"),
        stats=raw["stats"],
        cov=raw.get("cov"),
        theory=rec,
        theory_reason=reason,
    )
    res.summary = _summarize(res, lo, hi)
    res.summary["memory"] = {
        "budget_bytes": plan.memory_budget,
        "estimated_peak_bytes": plan.peak_bytes,
        "networks_per_chunk": plan.chunk if chunk is None else None,
        "chunks": plan.nchunks if chunk is None else None,
        "remat": plan.cfg.remat,
    }
    res.summary["time_s"] = time.perf_counter() - t0
    _keep_resolved(r, (rec, reason) if theory else None)  # a repeated run needs no SymPy
    return res


def attach_theory(res: SimulationResult, activation: str | Activation) -> SimulationResult:
    """``res`` of ``simulate(activation, ..., theory=False)`` with the theory column filled in:
    the same result, summary included, as ``simulate(..., theory=True)`` returns (its ``time_s``
    stays the simulation's). Lets ``symbnmf run`` simulate in background threads while the main
    thread derives the closed forms the theory values come from."""
    from symbnmf._activations import get_activation

    act = get_activation(activation)
    s = res.settings
    rec, reason = theory_values(act, s["batch_size"], gamma=s["gamma"], beta=s["beta"], eps=s["eps"])
    out = replace(res, theory=rec, theory_reason=reason)
    lo, hi = s["fit_window"]
    out.summary = _summarize(out, lo, hi)
    for k in ("memory", "time_s"):
        out.summary[k] = res.summary[k]
    return out


def precompile_simulation(
    activation: str | Activation,
    batch_size: int,
    width: int,
    depth: int,
    networks: int,
    *,
    dtype: str = "float32",
    weights: str = "gaussian",
    method: str = "auto",
    gamma: float = 1.0,
    beta: float = 0.0,
    eps: float = 0.0,
    sigma_b: float = 0.0,
    burn_in: int | None = None,
    init: str = "fixed_point",
    backward: bool = True,
    keep_cov: bool = False,
    memory_bytes: int | None = None,
    devices: Sequence[Any] | None = None,
) -> None:
    """Compile the program :func:`simulate` with the same arguments will run, without running it.

    Thread-safe: ``symbnmf run`` compiles the next simulations in a background thread while the
    current one runs (XLA compiles on one core, the simulation uses the other); a later
    :func:`simulate` waits for a compilation in progress instead of repeating it.
    """
    B, N, L, K, meth = _validate(
        batch_size, width, depth, networks, weights, dtype, method, init, gamma, beta, eps, sigma_b, burn_in
    )
    from symbnmf._activations import get_activation

    act = get_activation(activation)
    act.require_bound()
    _require_nondegenerate(act, gamma, beta, backward)
    if burn_in is None:
        burn_in = 5 if init == "fixed_point" else 0
    from symbnmf.montecarlo.run import precompile

    cfg = _net_config(
        _act_key(act), N, B, L, burn_in, meth, weights, dtype, gamma, beta, eps, sigma_b, init, backward, keep_cov
    )
    precompile(cfg, _deferred_phi(act), K, memory_bytes=memory_bytes, devices=devices)


def _summarize(res: SimulationResult, lo: int, hi: int) -> dict[str, Any]:
    s = dict(res.settings)
    rec, reason = res.theory, res.theory_reason
    B = s["batch_size"]
    lam_g = rec["backward"]["G"] if rec else None
    out: dict[str, Any] = {**s}
    out["theory_method"] = rec.get("method") if rec else None
    out["notes"] = (
        "theory values are for N = infinity; finite width biases every measured figure by O(1/N) "
        "(e.g. the fixed point's off-diagonal), so |z| grows like sqrt(networks)/N: compare the 1/N "
        "extrapolation over several widths (validation/report.py) before reading a large |z| as a failure"
    )
    if rec is None:
        out["theory_reason"] = reason
    if res.grad_x is not None:
        gx = res.grad_x.astype(np.float64)
        fit = fit_rate(gx, lo, hi, direction=-1)
        out["gradient_rate"] = _entry(fit.rate, fit.stderr, lam_g, reason)
        out["gradient_rate"]["estimator"] = (
            "exp(-slope) of log(mean over networks of |dloss/dx^l|^2) vs layer l, least squares on the fit "
            "window; delete-one jackknife stderr over networks"
        )
        # Weight gradients: layer l's gradient sits at h^l = W^l x^{l-1}; index l-1 in grad_w.
        assert res.grad_w is not None  # recorded whenever grad_x is
        wfit = fit_rate(res.grad_w, max(lo - 1, 0), min(hi - 1, s["depth"] - 1), direction=-1)
        out["weight_gradient_rate"] = _entry(wfit.rate, wfit.stderr, lam_g, reason)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log10(gx)
            out["layers"] = {
                "grad_x_sq_mean": _list(gx.mean(0)),
                "grad_x_sq_log10_mean_of_logs": _list(np.mean(logs, 0)),
                "grad_x_sq_log10_sd_of_logs": _list(np.std(logs, 0)),
                "grad_w_sq_mean": _list(res.grad_w.astype(np.float64).mean(0)),
            }
        if B <= 5:
            out["gradient_rate"]["note"] = (
                f"B={B} <= 5: the per-layer factor has infinite variance (1/chi^2 tails); the mean converges slowly "
                "in the number of networks and in the width"
            )
        if not np.all(np.isfinite(gx)):
            out["gradient_rate"]["note"] = "non-finite gradients (overflow): use --dtype float64 or fewer layers"
    # Covariance: per-network averages over the measured layers after the first.  The per-layer
    # statistics were reduced chunk by chunk in the simulation dtype (run.cov_stats).
    diag = res.stat("diag").astype(np.float64)
    off = res.stat("offdiag").astype(np.float64)
    fp = rec["fixed_point"] if rec else {}
    out["fixed_point"] = {
        "diag": _entry(*mean_se(diag[:, 1:].mean(1)), fp.get("diag"), reason),
        "offdiag": _entry(*mean_se(off[:, 1:].mean(1)), fp.get("offdiag"), reason),
    }
    pieces = {k: res.stat(k).astype(np.float64) for k in ("mu", "L", "M")}
    d_fp, o_fp = _f(fp.get("diag")), _f(fp.get("offdiag"))
    mu_star = d_fp - o_fp if rec and d_fp is not None and o_fp is not None else None
    dist: dict[str, Any] = {
        "L": _list(pieces["L"].mean(0)),
        "M": _list(pieces["M"].mean(0)),
        "mu": _list(pieces["mu"].mean(0)),
    }
    if mu_star:
        # Frobenius norm of (mu_l/mu* - 1) G.
        dist["G"] = _list((np.abs(pieces["mu"] / mu_star - 1) * math.sqrt(B - 1)).mean(0))
    else:
        dist["G"] = None
    fwd = rec["forward"] if rec else {}
    out["forward"] = {
        "distance": dist,
        "distance_definition": "mean over networks of Frobenius norms of the G/L/M parts of GΣG/mu - G, "
        "mu = tr(GΣG)/(B-1); G part = |mu/mu* - 1| * sqrt(B-1)",
        "theory": {"L": _f(fwd.get("L")), "M": _f(fwd.get("M"))} if rec else None,
    }
    return out


def _check_memory(peak: int, B: int, N: int, L: int, K: int) -> None:
    """Refuse, before starting, a simulation whose estimated peak memory exceeds the available RAM
    (instead of an out-of-memory traceback or an abort inside XLA)."""
    from symbnmf.montecarlo.run import available_memory

    avail = available_memory()
    if peak > avail:
        raise MonteCarloError(
            f"this simulation needs about {peak / 2**30:.3g} GiB of memory (B={B}, N={N}, L={L}, K={K}), more than "
            f"the {avail / 2**30:.3g} GiB available; reduce --batch-size, --width, --depth or --networks"
        )
