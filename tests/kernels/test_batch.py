"""Concrete batches of the exact kernels: spectra streamed from the host threads, per-matrix rules grouped
into blocks, calls spread over devices (``symbnmf.kernels.nngp._concrete``, ``symbnmf.kernels._host``).

Every matrix of a batch must come out as if computed alone with a rule that serves it, whatever block,
device or chunk it landed in; bad values anywhere in the batch must raise the same errors as before.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symbnmf.kernels import KernelError, batchnorm_nngp, batchnorm_ntk
from symbnmf.kernels import _host as H
from symbnmf.kernels import nngp as K


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def rel_rows(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.max(np.abs(a - b), axis=(-2, -1)) / np.max(np.abs(b), axis=(-2, -1))


def mixed_batch(B: int, n: int, seed: int) -> np.ndarray:
    """Near-BSB1, Wishart (ill-conditioned), wide, rank-3 and duplicate-row Σ, shuffled: many rules."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            c = 1.3 * np.eye(B) + 0.3 + 0.01 * rng.standard_normal((B, B))
            c = 0.5 * (c + c.T)
        elif kind in (1, 2):
            d = B + 2 if kind == 1 else 4 * B
            A = rng.standard_normal((B, d)) * rng.uniform(0.3, 3.0, size=(B, 1))
            c = A @ A.T / d + rng.uniform(0, 1)
        elif kind == 3:
            A = rng.standard_normal((B, 3))
            c = A @ A.T / 3 + 0.1
        else:
            A = rng.standard_normal((B, B + 2))
            A[1] = A[0] + 1e-3 * rng.standard_normal(B + 2)
            c = A @ A.T / (B + 2)
        out.append(c)
    return np.stack(out)[rng.permutation(n)]


def test_streamed_batch_equals_matrices_alone():
    """A batch large enough to stream (several host chunks) gives each matrix what it gives alone, and every
    matrix is within 1e-13 of a 1025-node DE rule (no matrix got a rule too small for it; that reference's
    own floor is ~3e-14)."""
    B, n = 8, 320
    covs = mixed_batch(B, n, 1)
    assert len(H.chunk_bounds(n, K._HOST_CHUNK)) > 1
    V = np.asarray(batchnorm_nngp(covs, "relu"))
    alone = np.stack([np.asarray(batchnorm_nngp(c, "relu")) for c in covs[:40]])
    assert rel_rows(V[:40], alone).max() < 1e-13
    ref = np.asarray(batchnorm_nngp(covs, "relu", nodes=1025))
    assert rel_rows(V, ref).max() < 1e-13
    # the NTK streams the same way (its rules have tail = 1)
    theta = np.eye(B) + 0.2
    V2, T = (np.asarray(x) for x in batchnorm_ntk(covs, theta, "relu"))
    Vr, Tr = (np.asarray(x) for x in batchnorm_ntk(covs, theta, "relu", nodes=1025))
    assert rel_rows(V2, Vr).max() < 1e-13 and rel_rows(T, Tr).max() < 1e-12


def test_batch_shape_and_order_are_kept():
    covs = mixed_batch(6, 200, 2).reshape(4, 50, 6, 6)
    V = np.asarray(batchnorm_nngp(covs, "leaky_relu(0.2)"))
    assert V.shape == covs.shape
    for i, j in [(0, 0), (1, 17), (3, 49)]:
        assert rel_rows(V[i, j], batchnorm_nngp(covs[i, j], "leaky_relu(0.2)")) < 1e-13


def _valid(groups: dict, sizes: np.ndarray) -> None:
    rows = np.concatenate(list(groups.values()))
    assert np.array_equal(np.sort(rows), np.unique(rows)), "a matrix in two groups"
    for r, idx in groups.items():
        if r.kind == "gauss":
            need = sizes[idx, 0 if r.power == 1.0 else 1]
            assert np.all((need > 0) & (need <= r.nodes)), (r, need.max())


@pytest.mark.parametrize("seed", range(5))
def test_groups_give_every_matrix_a_rule_that_serves_it(seed):
    """_rule_groups (padding filled from smaller rules) and _merged (the leftovers of streaming) put each
    matrix in one group whose rule is at least its own size for that map, and filling never adds padding."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(50, 700))
    sizes = rng.choice(np.array((0,) + K.GAUSS_SIZES), size=(k, 2), p=None)
    lam = np.abs(rng.standard_normal((k, 6)))  # only used for the DE rows' node count
    groups = K._rule_groups(None, 0.0, 1.0, 0.0, lam, sizes)
    _valid(groups, sizes)
    assert sorted(np.concatenate(list(groups.values())).tolist()) == list(range(k))
    nodes, half = K._chosen(sizes)
    plain: dict = {}
    for i in np.flatnonzero(nodes > 0):
        plain.setdefault(K.SRule("gauss", int(nodes[i]), 0.5 if half[i] else 1.0), []).append(i)
    evaluated = lambda g: sum(sum(K._blocks(len(v))) * r.nodes for r, v in g.items() if r.kind == "gauss")
    assert evaluated(groups) <= evaluated(plain)
    rest = np.flatnonzero(nodes > 0)[rng.permutation(int(np.sum(nodes > 0)))][: k // 3]
    merged = K._merged(rest, sizes)
    _valid(merged, sizes)
    assert sorted(np.concatenate(list(merged.values())).tolist()) == sorted(rest.tolist())


@pytest.mark.parametrize("seed", range(5))
def test_stream_blocks_are_full_and_serve_every_matrix(seed):
    """_next_block takes full blocks out of the waiting pool while one fits: each block holds
    _STREAM_BLOCK distinct waiting matrices whose own size for the block's map is at most its rule's, the
    smallest such sizes (no waiting matrix of that map is smaller than the block's largest and left out), and
    fewer than a block remain for the end."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(100, 900))
    sizes = rng.choice(np.array((0, 0) + K.GAUSS_SIZES), size=(k, 2))
    pool = np.flatnonzero(np.max(sizes, axis=-1) > 0)
    seen: list[int] = []
    while (nxt := K._next_block(pool, sizes)) is not None:
        rule, pos = nxt
        assert len(pos) == K._STREAM_BLOCK == len(set(pos.tolist()))
        col = 0 if rule.power == 1.0 else 1
        own = sizes[pool[pos], col]
        assert rule.kind == "gauss" and np.all((own > 0) & (own <= rule.nodes)) and rule.nodes in own
        others = np.delete(sizes[pool, col], pos)
        assert not np.any((others > 0) & (others < own.max()))
        seen += pool[pos].tolist()
        pool = np.delete(pool, pos)
    assert len(set(seen)) == len(seen)
    assert max(np.count_nonzero(sizes[pool, 0]), np.count_nonzero(sizes[pool, 1])) < K._STREAM_BLOCK


def test_sizes_from_the_extreme_eigenvalues_equal_sizes_from_all():
    """_gauss_sizes reads κ = λ_max/λ_min against a table of the largest κ each size serves: the same sizes as
    the nearest branch point over all λ_k (none for Σ_G = 0)."""

    def from_all(lam: np.ndarray, power: float) -> np.ndarray:
        pos = lam > 0
        lmax = np.max(lam, axis=-1, keepdims=True)
        lmin = np.min(np.where(pos, lam, np.inf), axis=-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            c = 0.5 / np.sqrt(lmax * lmin)
            u = (-1.0 / (2.0 * c * np.where(pos, lam, 1.0))).astype(complex) ** power
            far = ~pos | (np.abs(1.0 + u) < 1e-12)
            rho = np.min(np.where(far, np.inf, K._bernstein(np.where(far, 0.5, u / (1.0 + u)))), axis=-1)
            need = np.where(rho > 1.0, math.log(1.0 / K._GAUSS_TARGET) / (2.0 * np.log(rho)), np.inf)
        sizes = np.asarray(K.GAUSS_SIZES)
        idx = np.searchsorted(sizes, need)
        return np.where((idx < len(sizes)) & np.any(pos, axis=-1), sizes[np.minimum(idx, len(sizes) - 1)], 0)

    rng = np.random.default_rng(0)
    for _ in range(40):
        k, B = 200, int(rng.integers(4, 40))
        lam = np.exp(rng.uniform(-12, 2, (k, B))) * (rng.uniform(size=(k, B)) > rng.uniform(0, 0.5))
        lam[:, 0] = 0.0
        lam[rng.uniform(size=k) < 0.05] = 1.0  # BSB1: one eigenvalue
        lam[rng.uniform(size=k) < 0.05] = 0.0  # Σ_G = 0: no size
        lam[rng.uniform(size=k) < 0.05, 1:] = 3.0  # κ = 1 exactly
        for p in (1.0, 0.5):
            np.testing.assert_array_equal(K._gauss_sizes(lam, p), from_all(lam, p))


@pytest.mark.parametrize(
    "where, poison, match",
    [
        (250, "nan", "NaN or inf"),
        (190, "asym", "not symmetric"),
        (300, "neg", "not positive semidefinite"),
        (130, "shift", "G Σ G = 0"),
    ],
)
def test_bad_values_late_in_a_streamed_batch(where, poison, match):
    """The values are checked chunk by chunk in the host tasks while the kernels of earlier chunks run; a bad
    matrix in a late chunk raises the usual error, and the host pool serves the next call."""
    B = 8
    covs = mixed_batch(B, 320, 3)
    bad = covs.copy()
    if poison == "nan":
        bad[where, 2, 3] = bad[where, 3, 2] = np.nan
    elif poison == "asym":
        bad[where, 0, 1] += 0.5
    elif poison == "neg":
        bad[where] = -np.eye(B) - 0.1
    else:
        bad[where] = np.full((B, B), 2.0)
    with pytest.raises(KernelError, match=match):
        batchnorm_nngp(bad, "relu")
    with pytest.raises(KernelError, match=match):
        batchnorm_ntk(bad, np.eye(B), "relu")
    assert np.all(np.isfinite(np.asarray(batchnorm_nngp(covs[:200], "relu"))))


def test_results_arrive_asynchronously_in_their_own_buffers():
    """On one device the concrete path scatters each call's block into donated batch buffers and returns them
    before the kernels finish: back-to-back calls give each batch its own numbers in its own order (padding
    rows dropped), an earlier result stays valid, and ``return_error`` and the NTK fill their buffers too
    (batches of a stream block or more; smaller ones are gathered on the host)."""
    covs = mixed_batch(6, 300, 7)
    assert K._STREAM_BLOCK <= 130
    V1 = batchnorm_nngp(covs, "relu")
    V2 = batchnorm_nngp(covs[::-1], "relu")
    V3, err = batchnorm_nngp(covs[:130], "relu", return_error=True)
    V4, T4 = batchnorm_ntk(covs[:150], np.eye(6), "relu")
    assert all(isinstance(x, jax.Array) for x in (V1, V2, V3, err, V4, T4))
    assert not V1.is_deleted()
    a, b = np.asarray(V1), np.asarray(V2)
    assert rel_rows(a, b[::-1]).max() < 1e-13  # other blocks, other rule sizes: equal to the rules' accuracy
    assert rel_rows(np.asarray(V3), a[:130]).max() < 1e-13 and err.shape == (130,) and float(jnp.max(err)) < 1e-10
    assert rel_rows(np.asarray(V4), a[:150]).max() < 1e-13 and np.all(np.isfinite(np.asarray(T4)))
    alone = np.stack([np.asarray(batchnorm_nngp(c, "relu")) for c in covs[-3:]])
    assert rel_rows(a[-3:], alone).max() < 1e-13


def test_k1_matches_mpmath_with_its_derivative():
    """k₁(ρ) = (√(1 − ρ²) + (π − arccos ρ) ρ)/(2π) in :func:`_k1`'s form (π ρ₊ + u^{3/2} Ψ(u))/(2π) against mpmath
    at 60 digits: relative error near rounding everywhere, also as ρ → −1 where k₁ → 0 (the arcsine form
    lost every relative digit there); its derivative is k₀ = (π − arccos ρ)/(2π), ¼ at ρ = 0 (the kink of
    ρ₊ and of |ρ| cancel) and finite at ρ = ±1."""
    import mpmath as mp

    rho = np.concatenate([np.linspace(-1, 1, 801), -1 + np.logspace(-15, -1, 40), 1 - np.logspace(-15, -1, 40)])
    got = np.asarray(K._k1(jnp.asarray(rho)))
    with mp.workdps(60):
        ref = np.array(
            [float((mp.sqrt(1 - mp.mpf(x) ** 2) + (mp.pi - mp.acos(mp.mpf(x))) * mp.mpf(x)) / (2 * mp.pi)) for x in rho]
        )
    pos = ref > 0
    assert np.max(np.abs(got[pos] - ref[pos]) / ref[pos]) < 4 * np.finfo(float).eps * 8
    assert np.all(got[~pos] == 0.0)
    d = jax.vmap(jax.grad(K._k1))(jnp.asarray([-1.0, -0.5, 0.0, 0.3, 1.0]))
    k0 = (np.pi - np.arccos([-1.0, -0.5, 0.0, 0.3, 1.0])) / (2 * np.pi)
    assert np.max(np.abs(np.asarray(d) - k0)) < 1e-14


def test_reduced_basis_rebuilds_the_centred_decomposition():
    """UᵀΣU (``_reduced``) has Σ_G's spectrum less its structural zero, and ``_full_basis`` turns its
    eigenvectors into an orthonormal eigenbasis of Σ_G = GΣG (first column 1/√B, eigenvalue 0)."""
    B = 9
    covs = mixed_batch(B, 20, 8)
    U = K._range_basis(B)
    assert np.allclose(U.T @ U, np.eye(B - 1), atol=1e-15) and np.allclose(U.T @ np.ones(B), 0, atol=1e-14)
    lam, Y = K._host_spectra(covs)
    G = np.eye(B) - 1.0 / B
    for c, l, y in zip(covs, lam, Y):
        Q = np.asarray(K._full_basis(jnp.asarray(y)))
        SG = G @ c @ G
        assert np.allclose(Q.T @ Q, np.eye(B), atol=1e-14)
        assert np.allclose(Q[:, 0], 1 / math.sqrt(B)) and l[0] == 0.0
        assert np.max(np.abs(Q @ np.diag(l) @ Q.T - SG)) < 1e-13 * np.max(np.abs(SG))
        assert np.allclose(np.sort(l), np.sort(K._clip_spectra(np.linalg.eigvalsh(SG)[None])[0]), atol=1e-13 * l.max())


def test_host_pool_runs_chunks_in_order_and_inline_when_nested():
    bounds = H.chunk_bounds(1000, 64)
    assert bounds[0][0] == 0 and bounds[-1][1] == 1000 and len(bounds) == H.CHUNKS
    assert all(a < b for a, b in bounds) and all(b0 == a1 for (_, b0), (a1, _) in zip(bounds, bounds[1:]))
    assert H.chunk_bounds(100, 64) == [(0, 100)]
    names: list[str] = []

    def work(a: int, b: int) -> int:
        names.append(threading.current_thread().name)
        if a == 0:  # nested: runs in this pool thread, no deadlock even with every worker busy
            inner = H.submit_chunks(lambda x, y: x + y, [(1, 2), (3, 4)])
            assert [f.result() for f in inner] == [3, 7]
        return a

    futures = H.submit_chunks(work, bounds)
    H.raise_first(futures)
    assert [f.result() for f in futures] == [a for a, _ in bounds]
    assert all(n.startswith("symbnmf-kernels") for n in names)

    def fail(a: int, b: int) -> None:
        if a > 0:
            raise ValueError(f"chunk {a}")

    futures = H.submit_chunks(fail, bounds)
    with pytest.raises(ValueError, match=f"chunk {bounds[1][0]}$"):
        H.raise_first(futures)
    assert all(f.done() for f in futures)


def test_kernel_jit_options_and_nesting():
    """The kernel programs compile with :func:`compiler_options` when called on concrete arrays, and the
    same functions trace into the caller's jit (compile options are not allowed there)."""
    opts = H.compiler_options()
    assert isinstance(opts, dict)
    if jax.default_backend() == "cpu" and H._avx512():
        assert opts == {"xla_cpu_prefer_vector_width": 512}
    covs = mixed_batch(8, 16, 4)
    hom = K.homogeneous("relu")
    rule = K.choose_rule(covs)
    eps = jnp.asarray(0.0)
    a = np.asarray(K._nngp_exact(covs, eps, hom, rule, False))
    plain = jax.jit(K._nngp_exact.__wrapped__, static_argnames=("hom", "rule", "with_error"))
    b = np.asarray(plain(covs, eps, hom, rule, False))
    c = np.asarray(jax.jit(lambda x: K._nngp_exact(x, eps, hom, rule, False))(covs))
    assert rel_rows(a, b).max() < 1e-14 and rel_rows(c, b).max() < 1e-14


def test_activation_lookup_is_cached_by_name():
    assert K.homogeneous("relu") is K.homogeneous("relu")
    assert K._BY_NAME["relu"] == K.Homogeneous(1.0, 1.0, 0.0)
    assert K.homogeneous("tanh") is None and K._BY_NAME["tanh"] is None


SCRIPT = """
import json, sys
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
assert jax.device_count() == 2, jax.devices()
from symbnmf.kernels import batchnorm_nngp, batchnorm_ntk
covs = np.array(json.loads(sys.stdin.read()))
V = batchnorm_nngp(covs, "relu")
V2, T = batchnorm_ntk(covs, np.eye(covs.shape[-1]), "relu")
print(json.dumps({"V": np.asarray(V).tolist(), "T": np.asarray(T).tolist()}))
"""


def test_two_devices_match_one_device():
    """With two XLA CPU devices the calls of a batch are spread over both; every matrix's numbers are
    those of the one-device run."""
    covs = mixed_batch(6, 260, 5)
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        input=json.dumps(covs.tolist()),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    V = np.asarray(batchnorm_nngp(covs, "relu"))
    _, T = batchnorm_ntk(covs, np.eye(6), "relu")
    assert rel_rows(np.array(two["V"]), V).max() < 1e-14
    assert rel_rows(np.array(two["T"]), np.asarray(T)).max() < 1e-14


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # JAX's warning; the child never touches JAX
def test_a_forked_child_gets_a_working_pool():
    """The pool's threads do not survive fork(); the child starts a new pool instead of waiting forever."""
    import multiprocessing as mp

    covs = mixed_batch(6, 200, 6)
    V = np.asarray(batchnorm_nngp(covs, "relu"))  # the parent's pool exists now
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        bounds = pool.apply_async(_child_chunks).get(timeout=120)
    assert bounds == [a for a, _ in H.chunk_bounds(1000, 64)]
    assert np.all(np.isfinite(V))


def _child_chunks() -> list[int]:
    futures = H.submit_chunks(lambda a, b: a, H.chunk_bounds(1000, 64))
    return [f.result(timeout=60) for f in futures]


@pytest.mark.slow
def test_calibration_script_stays_within_its_bound():
    """benchmarks/calibrate_rules.py (the numbers behind the rules' target) runs and its worst error against
    the 96-node rule stays far below the kernels' 1e-12 promise."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "calibrate_rules.py"), "--n", "30"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    worst = float(proc.stdout.strip().splitlines()[-1].split()[-1])
    assert worst < 1e-13, proc.stdout


@pytest.mark.slow
def test_benchmark_script_runs_and_reports_its_configuration(tmp_path):
    """benchmarks/bench_kernels.py --quick runs end to end: its accuracy goal passes (the throughput goals are
    timing, judged in the full run), the JSON records the XLA thread setting it ran with (``--xla-threads``
    sets PJRT_NPROC for its own process), a bad thread count and an existing --json file are refused."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = os.path.join(root, "benchmarks", "bench_kernels.py")
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "PJRT_NPROC"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, script, *args], capture_output=True, text=True, timeout=600, cwd=root, env=env
        )

    proc = run("--quick", "--xla-threads", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["xla_threads"] == "1" and data["quick"]
    goals = {g["goal"]: g["pass"] for g in data["goals"]}
    assert goals["relative error <= 1e-12 everywhere"], data["accuracy"]
    assert sum("GP4A-style throughput" in g for g in goals) == 2
    assert "XLA CPU threads: 1" in proc.stdout
    refused = run("--quick", "--json", str(out))
    assert refused.returncode == 2 and "--force" in refused.stderr
    bad = run("--quick", "--xla-threads", "0")
    assert bad.returncode == 2 and "--xla-threads" in bad.stderr
