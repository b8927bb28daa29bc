"""Bounded memory in the training experiments (issue 14, item 1): dynamics, batched training, trainability.

* the planner keeps one call's estimated working set within the budget, rematerialises every layer
  only when one network per device does not fit, and any configuration runs;
* results do not depend on the chunking: bit-identical for any number of networks at the same call
  width (and with or without remat at the same width); equal to float32 rounding when a smaller
  budget narrows the call (XLA's batched products round differently at different widths);
* ``--memory-budget`` on ``symbnmf dynamics`` / ``trainability``, recorded in the JSON;
* the per-network estimate bounds XLA's ``memory_analysis`` of the compiled call within a factor 3 (slow);
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

pytest.importorskip("sklearn")

from symbnmf import SymbnmfError
from symbnmf.cli.main import main
from symbnmf.experiments import _memory as M
from symbnmf.experiments import dynamics as D
from symbnmf.experiments import train as T

#: tiny dynamics networks (one compiled program per call width, a few seconds each)
DYN = D.DynamicsConfig(depth=3, batch_size=8, width=16, steps=3, seeds=11, seed=2)
TRAIN = T.TrainConfig(depth=3, batch_size=8, width=16, steps=12)
EXACT = ("loss", "w_sq", "grad_w_sq", "dw_sq", "w_w0", "grad_x_sq")  # w_dw, w_grad are ~0: compared absolutely


@pytest.fixture(scope="module")
def digits():
    return T.load_digits()


def _close(a: dict, b: dict, rtol: float) -> None:
    for k in EXACT:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=0, err_msg=k)
    for k in ("w_dw", "w_grad"):  # orthogonal to rounding: compare against the norms' product
        scale = np.sqrt(a["w_sq"] * np.maximum(a["dw_sq" if k == "w_dw" else "grad_w_sq"], 1e-30))
        assert np.max(np.abs(a[k] - b[k]) / scale) < rtol, k


# ---------------------------------------------------------------------------------------------
# the planner (no compilation)
# ---------------------------------------------------------------------------------------------
def test_plan_keeps_one_call_within_the_budget(digits):
    big = D.DynamicsConfig(depth=100, batch_size=256, width=64, steps=10, seeds=40)
    full, remat = D.bytes_per_network(big, 64, 10, False), D.bytes_per_network(big, 64, 10, True)
    assert remat < full / 2  # the backward pass's stored activations dominate at B = 256, N = 64
    plan = D.plan_memory(big, digits, memory_bytes=4 * full)
    assert not plan.remat and plan.chunk == 4 and plan.nchunks == 10 and plan.fits
    assert plan.chunk * plan.bytes_per_network <= plan.memory_budget
    # one network does not fit without remat, fits with it: remat, then as wide as the budget allows
    plan = D.plan_memory(big, digits, memory_bytes=full - 1)
    assert plan.remat and plan.chunk == 2 and plan.bytes_per_network == remat and plan.fits
    # one network exceeds the budget even with remat: it still runs, one network per call
    tiny = D.plan_memory(big, digits, memory_bytes=1 << 20)
    assert tiny.remat and tiny.chunk == 1 and tiny.nchunks == 40 and not tiny.fits
    # the default: VMAP_WIDTH networks per device per call, fewer networks rounded up to a bucket
    small = D.plan_memory(replace(DYN, seeds=100), digits)
    assert small.chunk == M.VMAP_WIDTH and small.nchunks == 13 and small.padded == 4 and not small.remat
    assert D.plan_memory(replace(DYN, seeds=5), digits).chunk == 6
    four = D.plan_memory(replace(DYN, seeds=10), digits, devices=4)
    assert four.chunk == 12 and four.nchunks == 1  # 3 per device, sharded
    assert 64 << 20 <= M.resolve_budget(None) <= 1 << 30
    # what is kept grows with the networks (records, float64 on the host), the rest does not
    assert small.peak_bytes == small.chunk * small.bytes_per_network + 100 * 8 * D.record_floats(DYN) + (
        digits.x_train.nbytes + digits.y_train.nbytes
    )
    rec = small.to_json()
    assert {"budget_bytes", "estimated_peak_bytes", "networks_per_chunk", "chunks", "remat"} <= set(rec)
    t = T.plan_training(digits, replace(TRAIN, depth=60, batch_size=128, width=128), 16, memory_bytes=32 << 20)
    assert t.chunk * t.bytes_per_network <= 32 << 20 and t.chunk * t.nchunks >= 16


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "1G"])
def test_bad_budgets_are_refused(digits, bad):
    with pytest.raises(SymbnmfError, match="memory budget"):
        D.measure_dynamics(DYN, digits, memory_bytes=bad, theory_method=None)
    with pytest.raises(SymbnmfError, match="memory budget"):
        T.train_networks(digits, TRAIN, [1, 2], memory_bytes=bad)


def test_cli_rejects_an_unreadable_budget(capsys):
    argv = ["relu", "-B", "8", "-L", "3", "-N", "16", "-K", "3", "--seeds", "2", "--json"]
    assert main(["dynamics", *argv, "--memory-budget", "lots"]) == 2
    assert "--memory-budget" in json.loads(capsys.readouterr().out)["error"]


# ---------------------------------------------------------------------------------------------
# results do not depend on the chunking
# ---------------------------------------------------------------------------------------------
def test_dynamics_results_do_not_depend_on_chunking(digits):
    a, plan = D._run_networks(DYN, digits)  # 11 networks: two calls of 8 (5 padding networks)
    assert (plan.chunk, plan.nchunks, plan.remat) == (M.VMAP_WIDTH, 2, False)
    # fewer networks, one call of the same width: bit-identical
    b, _ = D._run_networks(replace(DYN, seeds=8), digits)
    assert all(np.array_equal(a[k][:8], b[k]) for k in a)
    # a budget of three networks: narrower calls, equal to float32 rounding
    bpn = D.bytes_per_network(DYN, 64, 10)
    d, plan = D._run_networks(DYN, digits, memory_bytes=3 * bpn)
    assert (plan.chunk, plan.nchunks, plan.remat) == (3, 4, False)
    _close(d, a, rtol=1e-5)


@pytest.mark.slow
def test_remat_gives_the_same_numbers(digits):
    """Every layer rematerialised (a budget below one network) at the same call width: bit-identical
    (XLA:CPU recomputes the same operations); at another width, float32 rounding."""
    a, _ = D._run_networks(DYN, digits)
    c, plan = D._run_networks(DYN, digits, memory_bytes=1, chunk=M.VMAP_WIDTH)
    assert plan.remat and not plan.fits and plan.chunk == M.VMAP_WIDTH
    assert all(np.array_equal(a[k], c[k]) for k in a)
    e, plan = D._run_networks(DYN, digits, memory_bytes=D.bytes_per_network(DYN, 64, 10) - 1)
    assert plan.remat and plan.fits and plan.chunk == 1
    _close(e, a, rtol=1e-5)
    kw = dict(activation="relu", width=16, depth=8, n_networks=12, seed=1, dataset=digits)
    g = T.gradient_growth(8, **kw)
    assert g.extra["memory"]["networks_per_chunk"] == M.VMAP_WIDTH and g.extra["memory"]["chunks"] == 2
    h = T.gradient_growth(8, **kw, chunk=M.VMAP_WIDTH, memory_bytes=1)
    assert h.extra["memory"]["remat"] and g.log_mean_sq == h.log_mean_sq
    i = T.gradient_growth(8, **kw, chunk=4)  # narrower calls: float32 rounding
    np.testing.assert_allclose(i.log_mean_sq, g.log_mean_sq, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_train_networks_results_do_not_depend_on_chunking(digits):
    seeds = [3, 4, 5, 6, 7]
    key = lambda rs: np.array([[r.final_loss, r.test_accuracy, r.train_accuracy] for r in rs])
    a = key(T.train_networks(digits, TRAIN, seeds))  # one call of 6 (a padding network)
    assert T.plan_training(digits, TRAIN, 5).chunk == 6
    # one more seed, same width: bit-identical
    assert np.array_equal(key(T.train_networks(digits, TRAIN, [*seeds, 8]))[:5], a)
    # a budget below one network: remat, one network per call; float32 rounding
    plan = T.plan_training(digits, TRAIN, 5, memory_bytes=1)
    assert plan.remat and plan.chunk == 1 and plan.nchunks == 5
    c = key(T.train_networks(digits, TRAIN, seeds, memory_bytes=1))
    np.testing.assert_allclose(c[:, 0], a[:, 0], rtol=1e-5)
    one = T.train_network(digits, replace(TRAIN, seed=4))
    rem = T.train_network(digits, replace(TRAIN, seed=4), memory_bytes=1)  # the same network, remat
    assert rem.final_loss == pytest.approx(one.final_loss, rel=1e-6) and rem.final_loss == pytest.approx(
        c[1, 0], rel=1e-5
    )
    bpn = T.bytes_per_network(TRAIN, digits)
    assert T.bytes_per_network(TRAIN, digits, remat=True) < bpn
    # a budget of two networks: three calls of 2, float32 rounding only (accuracies are counts)
    plan = T.plan_training(digits, TRAIN, 5, memory_bytes=2 * bpn)
    assert (plan.chunk, plan.nchunks, plan.remat) == (2, 3, False)
    b = key(T.train_networks(digits, TRAIN, seeds, memory_bytes=2 * bpn))
    np.testing.assert_allclose(b[:, 0], a[:, 0], rtol=1e-5)
    assert np.max(np.abs(b[:, 1:] - a[:, 1:])) <= 1.5 / len(digits.y_test)
    # the trainability grid records the cells' plans
    from symbnmf.experiments.trainability import run_grid

    g = run_grid([3], [8], width=16, steps=12, seeds=5, progress=False, theory_method="fast", memory_bytes=2 * bpn)
    assert g["memory"]["networks_per_chunk"] == 2 and g["memory"]["chunks"] == 3 and not g["memory"]["remat"]
    assert g["memory"]["budget_bytes"] == 2 * bpn and len(g["runs"]) == 5


# ---------------------------------------------------------------------------------------------
# the estimate against XLA's own memory analysis (slow: compiles 8 programs)
# ---------------------------------------------------------------------------------------------
ANALYSED = [(12, 4, 64, 2), (40, 128, 64, 2), (10, 16, 256, 2), (6, 256, 32, 4)]  # depth, B, width, steps


@pytest.mark.slow
@pytest.mark.parametrize("remat", [False, True])
def test_memory_estimate_bounds_xla_memory_analysis(digits, remat):
    import jax
    import jax.numpy as jnp

    xtr, ytr, xte, yte = (jnp.asarray(a) for a in (digits.x_train, digits.y_train, digits.x_test, digits.y_test))
    w, f = 2, jnp.float32(1.0)

    def used(compiled) -> float:
        m = compiled.memory_analysis()
        return (m.temp_size_in_bytes + m.output_size_in_bytes) / w

    keys = jax.ShapeDtypeStruct((w, 2), jnp.uint32)
    for L, B, N, K in ANALYSED[:2] if remat else ANALYSED:
        cfg = D.DynamicsConfig(depth=L, batch_size=B, width=N, steps=K)
        idx = jax.ShapeDtypeStruct((w, K + 1, B), jnp.int32)
        c = D._compiled_dynamics(cfg, 64, 10, remat).lower(keys, idx, xtr, ytr, f).compile()
        est = D.bytes_per_network(cfg, 64, 10, remat)
        assert used(c) <= est <= 3 * used(c), ("dynamics", cfg, used(c), est)
        tc = T.TrainConfig(depth=L, batch_size=B, width=N, steps=K)
        idx = jax.ShapeDtypeStruct((w, K, B), jnp.int32)
        c = T._chunk_trainer(tc, 64, 10, remat).lower(keys, idx, f, f, xtr, ytr, xte, yte, f).compile()
        est = T.bytes_per_network(tc, digits, remat)
        assert used(c) <= est <= 3 * used(c), ("train", tc, used(c), est)


# ---------------------------------------------------------------------------------------------
# peak memory of a run far above the budget (slow: subprocesses)
# ---------------------------------------------------------------------------------------------
PEAK = """
import json, resource, sys
from symbnmf.experiments.dynamics import DynamicsConfig, measure_dynamics
from symbnmf.experiments.train import TrainConfig, load_digits, train_networks
what, K, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ds = load_digits()
if what == "dynamics":
    r = measure_dynamics(DynamicsConfig(depth=10, batch_size=256, width=128, steps=2, seeds=K), ds,
                         theory_method=None, memory_bytes=budget)
    mem = r.memory
else:
    from symbnmf.experiments.train import plan_training
    cfg = TrainConfig(depth=10, batch_size=256, width=128, steps=3)
    train_networks(ds, cfg, list(range(K)), memory_bytes=budget)
    mem = plan_training(ds, cfg, K, memory_bytes=budget).to_json()
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "memory": mem}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("what", ["dynamics", "train"])
def test_peak_memory_stays_within_budget_when_unchunked_would_not(tmp_path, what):
    """depth 10, width 128, B = 256: ~17 MB per network; 24 networks unchunked ~400 MB; budget 64 MiB."""
    env = dict(os.environ, SYMBNMF_CACHE_DIR=str(tmp_path), JAX_PLATFORMS="cpu")

    def peak(K: int, budget: int) -> dict:
        proc = subprocess.run(
            [sys.executable, "-c", PEAK, what, str(K), str(budget)],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    budget = 64 << 20
    one = peak(1, budget)  # the JAX runtime, compilation and one network
    many = peak(24, budget)
    mem = many["memory"]
    assert 24 * mem["bytes_per_network"] > 5 * budget  # unchunked would be far above the budget
    assert mem["networks_per_chunk"] * mem["bytes_per_network"] <= budget and mem["chunks"] > 1
    assert mem["estimated_peak_bytes"] <= budget + (2 << 20)
    assert many["peak"] <= one["peak"] + budget + (100 << 20), (one, many)
