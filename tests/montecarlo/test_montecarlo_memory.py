"""Bounded memory in the Monte Carlo stage (issue 14).

* the per-layer covariance statistics reduced inside each call (``run.cov_stats``, O(B²))
  equal the numpy G/L/M projection (``stats.glm_pieces``) they replace;
* results do not depend on the chunking: bit-identical for any number of networks and any
  budget that holds one call of the default width; equal to floating-point rounding when the
  budget forces rematerialisation or a narrower call;
* the chunk planner keeps one call's estimated working set within the budget, and the estimate
  bounds XLA's own memory analysis of the compiled call (slow);
* a run whose unchunked working set is far above the budget stays within it (peak RSS of a
  subprocess, slow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from symbnmf.montecarlo.networks import simulate
from symbnmf.montecarlo.run import (
    VMAP_WIDTH,
    NetConfig,
    bytes_per_network,
    cov_stats,
    default_memory_budget,
    plan_chunks,
)
from symbnmf.montecarlo.stats import glm_pieces

SMALL = dict(activation="relu", batch_size=6, width=16, depth=4, seed=3, theory=False)


def _cfg(**kw) -> NetConfig:
    base = dict(
        width=256,
        batch_size=128,
        depth=200,
        burn_in=5,
        method="fast",
        weights="gaussian",
        dtype="float32",
        gamma=1.0,
        beta=0.0,
        eps=0.0,
        sigma_b=0.0,
        init="fixed_point",
        backward=True,
        activation="relu",
    )
    base.update(kw)
    return NetConfig(**base)


@pytest.mark.parametrize("B", [2, 4, 5, 33])
def test_cov_stats_equal_numpy_glm_projection(B):
    import jax

    rng = np.random.default_rng(B)
    with jax.enable_x64(True):
        fn = jax.jit(cov_stats)
        for _ in range(3):
            X = rng.standard_normal((3 * B, B)) * rng.uniform(0.5, 2, B) + rng.standard_normal(B)
            S = X.T @ X / (3 * B)
            got = np.asarray(fn(jax.numpy.asarray(S)))
            ref = glm_pieces(S)
            off = (S.sum() - np.trace(S)) / (B * (B - 1))
            want = [np.trace(S) / B, off, ref["mu"], ref["L"], ref["M"]]
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [pytest.param("float32", marks=pytest.mark.slow), "float64"])
def test_results_do_not_depend_on_chunking(dtype):
    a = simulate(**SMALL, networks=2 * VMAP_WIDTH + 3, dtype=dtype)
    # fewer networks, more networks, a budget of exactly one call: bit-identical
    for K, budget in ((VMAP_WIDTH + 1, None), (3 * VMAP_WIDTH, None), (2 * VMAP_WIDTH + 3, 1 << 20)):
        b = simulate(**SMALL, networks=K, dtype=dtype, memory_bytes=budget)
        n = min(K, a.grad_x.shape[0])
        for k in ("grad_x", "grad_w", "stats"):
            assert np.array_equal(getattr(a, k)[:n], getattr(b, k)[:n]), (K, budget, k)
    # a budget that forces rematerialisation and narrower calls: equal to rounding
    c = simulate(**SMALL, networks=2 * VMAP_WIDTH + 3, dtype=dtype, memory_bytes=40_000)
    assert c.summary["memory"]["remat"] and c.summary["memory"]["networks_per_chunk"] < VMAP_WIDTH
    rtol = 1e-4 if dtype == "float32" else 1e-12
    for k in ("grad_x", "grad_w", "stats"):
        np.testing.assert_allclose(getattr(c, k), getattr(a, k), rtol=rtol, atol=0)
    # the summary is computed from the streamed statistics
    assert a.cov is None and a.summary["forward"]["distance"]["L"][0] == pytest.approx(a.stat("L")[:, 0].mean())


@pytest.mark.slow
def test_keep_cov_returns_the_covariances_the_statistics_come_from():
    r = simulate(**SMALL, networks=4, dtype="float64", keep_cov=True)
    assert r.cov.shape == (4, SMALL["depth"] + 1, 6, 6)
    ref = glm_pieces(r.cov)
    np.testing.assert_allclose(r.stat("L"), ref["L"], rtol=1e-10)
    np.testing.assert_allclose(r.stat("M"), ref["M"], rtol=1e-10)
    np.testing.assert_allclose(r.stat("diag"), np.einsum("klii->kl", r.cov) / 6, rtol=1e-12)


def test_plan_keeps_one_call_within_the_budget():
    cfg = _cfg()
    big = bytes_per_network(cfg)
    budget = 1 << 30
    plan = plan_chunks(cfg, 100, memory_bytes=budget)
    # N=256, B=128, L=200: 8 networks without remat exceed 1 GiB, so the backward pass is rematerialised
    assert big * VMAP_WIDTH > budget and plan.cfg.remat and plan.bytes_per_network < big / 4
    assert plan.chunk * plan.bytes_per_network <= budget and plan.chunk * plan.nchunks >= 100
    tiny = plan_chunks(cfg, 100, memory_bytes=1 << 20)
    assert tiny.chunk == 1 and not tiny.fits and tiny.nchunks == 100  # still runs, one network per call
    fwd = plan_chunks(replace(cfg, backward=False), 100, memory_bytes=budget)
    assert not fwd.cfg.remat and fwd.chunk == VMAP_WIDTH
    four = plan_chunks(_cfg(width=64, batch_size=8, depth=20), 10, devices=4)
    assert four.chunk % 4 == 0 and four.chunk * four.nchunks >= 10
    assert 64 << 20 <= default_memory_budget() <= 1 << 30


@pytest.mark.slow
@pytest.mark.parametrize("remat", [False, True])
def test_memory_estimate_bounds_xla_memory_analysis(remat):
    import functools

    import jax

    import symbnmf
    from symbnmf.montecarlo.run import network_pass

    phi = symbnmf.get_activation("relu").numeric("jax")
    for cfg in (_cfg(width=256, batch_size=64, depth=40, remat=remat), _cfg(width=512, batch_size=8, depth=50)):
        fn = jax.jit(jax.vmap(functools.partial(network_pass, phi=phi, cfg=cfg), in_axes=(0, None)))
        m = fn.lower(np.arange(2, dtype=np.int32), np.uint32(0)).compile().memory_analysis()
        used = m.temp_size_in_bytes + m.output_size_in_bytes
        assert used <= 2 * bytes_per_network(cfg), (cfg, used, bytes_per_network(cfg))


PEAK = """
import json, resource, sys
from symbnmf.montecarlo.networks import simulate
K, budget = int(sys.argv[1]), int(sys.argv[2])
r = simulate("relu", 64, 256, 100, K, theory=False, memory_bytes=budget)
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "memory": r.summary["memory"]}))
"""


@pytest.mark.slow
def test_peak_memory_stays_within_budget_when_unchunked_would_not(tmp_path):
    """N=256, B=64, L=100: ~40 MB per network, 40 networks unchunked ~1.6 GB; budget 64 MiB."""
    env = dict(os.environ, SYMBNMF_CACHE_DIR=str(tmp_path))

    def peak(K: int, budget: int) -> dict:
        proc = subprocess.run(
            [sys.executable, "-c", PEAK, str(K), str(budget)], env=env, capture_output=True, text=True, timeout=900
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    budget = 64 << 20
    one = peak(1, budget)  # the JAX runtime, compilation and one network
    many = peak(40, budget)
    cfg = _cfg(width=256, batch_size=64, depth=100)
    assert 40 * bytes_per_network(cfg) > 20 * budget  # unchunked would be far above the budget
    assert many["memory"]["estimated_peak_bytes"] <= budget + (1 << 20)
    assert many["peak"] <= one["peak"] + budget + (100 << 20), (one, many)


def test_precompile_then_simulate_compiles_once():
    """``symbnmf run`` compiles the next simulations in a background thread: the simulation then
    reuses that executable (same configuration, same call width) instead of compiling again."""
    import threading

    from symbnmf.montecarlo import run as R
    from symbnmf.montecarlo.networks import precompile_simulation

    t = threading.Thread(target=precompile_simulation, args=("relu", 5, 12, 3, 9))
    t.start()
    t.join()
    n = len(R._EXECUTABLES)
    r = simulate("relu", 5, 12, 3, 9, theory=False)
    assert len(R._EXECUTABLES) == n and r.grad_x.shape == (9, 4)
