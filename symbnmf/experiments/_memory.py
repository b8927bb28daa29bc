"""Memory budget of the training experiments (issue 14): per-network estimates and chunk plans (private).

The dynamics measurement (:func:`symbnmf.experiments.dynamics.measure_dynamics`), batched training
(:func:`symbnmf.experiments.train.train_networks`, hence the trainability grid) and the
gradient-growth measurement run independent networks vmapped over a leading networks axis.  As in
``symbnmf simulate`` (:mod:`symbnmf.montecarlo.run`), the networks are processed in calls of a
fixed width planned from a memory budget (default :func:`symbnmf.montecarlo.run.default_memory_budget`:
a quarter of the available RAM, at most 1 GiB), one call after the other, so the working memory is
that of one call whatever the number of networks; each call returns only per-network records
(losses, accuracies, per-step norms), never the networks' parameters.

Per-network working set of one call (float32, ``P`` parameters, ``A = depth * B * N`` activation
entries of one step), checked against XLA's ``compiled.memory_analysis()`` in the tests:

* parameters, gradients, optimiser state, the updated parameters and (dynamics) the initial
  parameters and the update: :data:`PARAM_COPIES_TRAIN` (:data:`PARAM_COPIES`) copies of ``P``;
* the activations the backward pass of one step stores: :data:`ACT_STORED` ``A`` (every
  intermediate of every layer), or with ``jax.checkpoint`` of each layer (remat) only the layer
  inputs, ``A``, plus one layer's working set; (dynamics, gradient growth) the probes of
  ``d loss/d x^l`` and their gradients, ``2 A``;
* the per-step records the call returns, and (training) the evaluation on the training and test
  sets (a few ``n x N`` arrays of one layer at a time).

Planning (:func:`plan_networks`), as in ``symbnmf simulate``: each call vmaps :data:`VMAP_WIDTH`
networks per device, fewer (rounded up to one of :data:`CHUNK_BUCKETS`, so few programs compile)
when there are fewer networks or when the budget cannot hold that many; the padding networks of
the last call are computed and dropped.  Only when one network per device does not fit is every
layer rematerialised (``jax.checkpoint``).

Results: network k's numbers depend only on its seed and on the call width, so they are
bit-identical for any number of networks >= the width and any budget that holds one call of the
default width.  A narrower call (a smaller budget, or fewer networks) changes them by float32
rounding only: XLA's batched products and reductions round differently at different widths
(measured: up to ~2e-6 relative after 3 steps).  Rematerialisation recomputes the same operations:
bit-identical at the same call width on XLA:CPU (tested), equal to float32 rounding in general.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from symbnmf._chunking import CHUNK_BUCKETS as CHUNK_BUCKETS
from symbnmf._chunking import VMAP_WIDTH as VMAP_WIDTH
from symbnmf._chunking import bucket_down, bucket_up
from symbnmf._errors import SymbnmfError

#: Copies of the parameters live in one step of the dynamics measurement (params, initial params,
#: grads, optimiser state, updated params, update; measured 4.3-5.1 with the scan's loop buffers).
PARAM_COPIES = 6

#: The same for plain training (params, grads, optimiser state, updated params; measured ~3.5-4).
PARAM_COPIES_TRAIN = 5

#: Stored activations of the backward pass per layer and step, in units of B x N (measured 3-6).
ACT_STORED = 8

F32 = 4


def check_budget(memory_bytes: Any) -> int | None:
    """``memory_bytes`` validated: None or a positive integer number of bytes."""
    if memory_bytes is None:
        return None
    if isinstance(memory_bytes, bool) or not isinstance(memory_bytes, (int, np.integer)) or memory_bytes < 1:
        raise SymbnmfError(
            f"memory budget must be a positive number of bytes, got {memory_bytes!r}; e.g. --memory-budget 512M"
        )
    return int(memory_bytes)


def resolve_budget(memory_bytes: Any) -> int:
    """The budget in bytes: ``memory_bytes`` or :func:`symbnmf.montecarlo.run.default_memory_budget`."""
    b = check_budget(memory_bytes)
    if b is not None:
        return b
    from symbnmf.montecarlo.run import default_memory_budget

    return default_memory_budget()


def n_params(d_in: int, width: int, depth: int, n_out: int) -> int:
    """Parameters of the training network: W^1, W^2..W^L, gamma, beta, readout weights and bias."""
    return d_in * width + (depth - 1) * width * width + 2 * depth * width + width * n_out + n_out


def step_bytes(d_in: int, width: int, depth: int, n_out: int, batch: int, remat: bool, perturb: bool = False) -> int:
    """Working set of one forward + backward pass of one network on one batch (parameters not included).

    The stored activations: :data:`ACT_STORED` ``A`` (``A = depth * batch * width``), or with
    ``remat`` the layer inputs ``A`` plus one layer's intermediates and its N x N weight gradient;
    with ``perturb`` (the probes of ``d loss/d x^l``) the probes and their gradients, ``2 A``;
    and the batch, its logits and a layer's output.
    """
    A = depth * batch * width
    act = A + ACT_STORED * batch * width + width * width if remat else ACT_STORED * A
    if perturb:
        act += 2 * A
    return F32 * (act + 4 * batch * (d_in + n_out + width))


def eval_bytes(d_in: int, width: int, n_out: int, n_eval: int) -> int:
    """Working set of the evaluation forward pass on ``n_eval`` samples (one layer live at a time)."""
    return F32 * n_eval * (d_in + 2 * width + 2 * n_out)


@dataclass(frozen=True)
class MemoryPlan:
    """How ``networks`` networks are run: ``nchunks`` calls of ``chunk`` networks (``chunk / devices`` per device)."""

    networks: int
    chunk: int
    nchunks: int
    devices: int
    remat: bool
    memory_budget: int
    bytes_per_network: int  # one network's working set in a call (with ``remat`` decided)
    kept_bytes_per_network: int  # what is kept on the host per network after its call
    peak_bytes: int  # estimated: one call's working set + all kept records + shared inputs
    fits: bool  # False: one network per device exceeds the budget (it still runs)

    @property
    def padded(self) -> int:
        return self.chunk * self.nchunks - self.networks

    def to_json(self) -> dict[str, Any]:
        """The ``memory`` record of the JSON outputs (same keys as ``symbnmf simulate``'s, and more)."""
        return {
            "budget_bytes": self.memory_budget,
            "estimated_peak_bytes": self.peak_bytes,
            "bytes_per_network": self.bytes_per_network,
            "networks_per_chunk": self.chunk,
            "chunks": self.nchunks,
            "remat": self.remat,
            "fits": self.fits,
        }


def plan_networks(
    networks: int,
    per_network: Callable[[bool], int],
    *,
    kept_per_network: int = 0,
    shared_bytes: int = 0,
    memory_bytes: Any = None,
    devices: int = 1,
    chunk: int | None = None,
) -> MemoryPlan:
    """Plan the calls for ``networks`` networks; ``per_network(remat)`` is one network's working set.

    Without remat if one network per device fits the budget, otherwise with remat; at the call
    width of the module docstring, narrowed to what fits (at least one network per device: any
    configuration runs, ``fits`` then says it exceeds the budget).
    ``chunk`` forces the networks per call (rounded up to a multiple of the device count).
    """
    if int(networks) < 1:
        raise SymbnmfError(f"need at least one network, got {networks!r}")
    networks = int(networks)
    budget = resolve_budget(memory_bytes)
    nd = max(1, int(devices))
    remat = False
    bpn = int(per_network(False))
    if bpn * nd > budget:
        remat = True
        bpn = int(per_network(True))
    if chunk is not None:
        w = -(-max(1, int(chunk)) // nd)
    else:
        w = bucket_up(-(-networks // nd))
        if bpn * w * nd > budget:
            w = bucket_down(budget // (bpn * nd))
    size = w * nd
    kept = int(kept_per_network)
    return MemoryPlan(
        networks=networks,
        chunk=size,
        nchunks=-(-networks // size),
        devices=nd,
        remat=remat,
        memory_budget=budget,
        bytes_per_network=bpn,
        kept_bytes_per_network=kept,
        peak_bytes=bpn * size + kept * networks + int(shared_bytes),
        fits=bpn * nd <= budget,
    )


def check_available(plan: MemoryPlan, what: str) -> None:
    """Refuse, before starting, a run whose estimated peak exceeds the available RAM."""
    from symbnmf.montecarlo.run import available_memory

    avail = available_memory()
    if plan.peak_bytes > avail:
        raise SymbnmfError(
            f"{what} needs about {plan.peak_bytes / 2**30:.3g} GiB of memory, more than the "
            f"{avail / 2**30:.3g} GiB available; use fewer networks, steps, layers or a smaller width"
        )


def summarize_plans(plans: list[MemoryPlan]) -> dict[str, Any]:
    """One ``memory`` record for several runs (e.g. the cells of a grid): the budget, the largest
    estimated peak, the narrowest call, the most calls, whether any run used remat (and how many)."""
    if not plans:
        return {}
    return {
        "budget_bytes": plans[0].memory_budget,
        "estimated_peak_bytes": max(p.peak_bytes for p in plans),
        "bytes_per_network": max(p.bytes_per_network for p in plans),
        "networks_per_chunk": min(p.chunk for p in plans),
        "chunks": max(p.nchunks for p in plans),
        "remat": any(p.remat for p in plans),
        "runs_with_remat": sum(p.remat for p in plans),
        "fits": all(p.fits for p in plans),
    }
