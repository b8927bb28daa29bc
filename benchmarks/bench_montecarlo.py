"""Benchmark: Monte Carlo of batch-normalized networks, forward + backward, measured interleaved.

Implementations (all: ReLU, BN eps = 0, float32, i.i.d. input, random linear readout, every
network's ‖∂loss/∂x^l‖² at every layer):

* ``symbnmf``: :func:`symbnmf.montecarlo.run.run_networks`, the exact O(N·B²) Gaussian sampler
  (custom-VJP layer, vmapped calls of a fixed width, ``jax.grad``).
* ``numpy low-rank`` (the fair baseline): the same exact sampler in plain numpy
  (``benchmarks/lowrank_numpy.py``).
* context, slower algorithms: ``numpy dense`` (N×N weights per layer, hand-written backprop) and
  ``naive JAX`` (dense weights in ``lax.scan``, ``jax.grad``, vmapped, jit).
* ``--prng``: symbnmf with JAX's ``rbg`` and ``unsafe_rbg`` PRNGs beside the default threefry
  (the law is unchanged: standard normals either way).

Timing: after one warm-up call each (JAX compilation, reported apart as ``first call``), the
implementations run in rounds A B C A B C ... (``--repeat`` rounds; slow context ones only in the
first ``--repeat-slow`` rounds), so machine-load drifts hit all of them alike.  Reported: median
and min wall time and median CPU time (process time: all threads), and the ratio of medians to
``symbnmf`` (goals are judged on these ratios, never on absolute seconds).  The fitted gradient
growth rates are printed as a check that all simulate the same thing.

    python benchmarks/bench_montecarlo.py            # N=512, B=8, L=50, 100 networks
    python benchmarks/bench_montecarlo.py --quick    # small, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lowrank_numpy import lowrank_networks


def numpy_dense(N: int, B: int, L: int, K: int, seed: int) -> np.ndarray:
    """(K, L+1) squared gradient norms, dense float32 numpy, ReLU, BN (eps = 0)."""
    rng = np.random.default_rng(seed)
    out = np.empty((K, L + 1))
    scale = np.float32(1 / np.sqrt(N))
    for k in range(K):
        x = rng.standard_normal((N, B), dtype=np.float32)
        R = rng.standard_normal((N, B), dtype=np.float32)
        Ws, ys, sds = [], [], []
        for _ in range(L):
            W = rng.standard_normal((N, N), dtype=np.float32) * scale
            h = W @ x
            c = h - h.mean(1, keepdims=True)
            sd = np.sqrt((c * c).mean(1, keepdims=True))
            y = c / sd
            Ws.append(W), ys.append(y), sds.append(sd)
            x = np.maximum(y, 0)
        g = R
        out[k, L] = float(np.sum(g * g))
        for l in range(L - 1, -1, -1):
            y, sd = ys[l], sds[l]
            gy = g * (y > 0)
            gh = (gy - gy.mean(1, keepdims=True) - y * (gy * y).mean(1, keepdims=True)) / sd
            g = Ws[l].T @ gh
            out[k, l] = float(np.sum(g * g))
    return out


def naive_jax(N: int, B: int, L: int):
    import jax
    import jax.numpy as jnp

    def one(key):
        kx, kr, kl = jax.random.split(key, 3)
        x0 = jax.random.normal(kx, (N, B))
        R = jax.random.normal(kr, (N, B))

        def loss(us):
            def body(x, inp):
                k, u = inp
                h = (jax.random.normal(k, (N, N)) / jnp.sqrt(N)) @ (x + u)
                c = h - h.mean(1, keepdims=True)
                return jax.nn.relu(c / jnp.sqrt((c * c).mean(1, keepdims=True))), None

            x, _ = jax.lax.scan(body, x0, (jax.random.split(kl, L), us[:L]))
            return jnp.sum(R * (x + us[L]))

        g = jax.grad(loss)(jnp.zeros((L + 1, N, B)))
        return jnp.sum(g * g, axis=(1, 2))

    f = jax.jit(jax.vmap(one))
    return lambda K, seed: np.asarray(f(jax.random.split(jax.random.key(seed), K)))


def symbnmf_fast(N: int, B: int, L: int, prng: str = "threefry2x32"):
    import symbnmf
    from symbnmf.montecarlo.run import NetConfig, run_networks

    phi = symbnmf.get_activation("relu").numeric("jax")
    cfg = NetConfig(N, B, L, 0, "fast", "gaussian", "float32", 1.0, 0.0, 0.0, 0.0, "iid", True, "relu", prng=prng)
    return lambda K, seed: run_networks(cfg, phi, seed, K)["grad_x"]


def _clock(fn, seed: int) -> tuple[float, float, np.ndarray]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(seed)
    return time.perf_counter() - w0, time.process_time() - c0, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", "-N", type=int, default=512)
    p.add_argument("--batch-size", "-B", type=int, default=8)
    p.add_argument("--depth", "-L", type=int, default=50)
    p.add_argument("--networks", "-K", type=int, default=100)
    p.add_argument("--repeat", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--repeat-slow", type=int, default=1, help="rounds that include the dense context ones (default 1)")
    p.add_argument("--skip-dense", action="store_true", help="leave out numpy dense and naive JAX")
    p.add_argument("--prng", action="store_true", help="also time symbnmf with the rbg and unsafe_rbg PRNGs")
    p.add_argument("--quick", action="store_true", help="N=128, L=10, K=20, two rounds")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = p.parse_args(argv)
    if a.quick:
        a.width, a.depth, a.networks, a.repeat, a.repeat_slow = 128, 10, 20, 2, 1
    import jax

    from symbnmf.montecarlo.stats import fit_rate

    N, B, L, K = a.width, a.batch_size, a.depth, a.networks
    impls = {"symbnmf": symbnmf_fast(N, B, L), "numpy low-rank": lambda K, s: lowrank_networks(N, B, L, K, s)}
    slow = set()
    if a.prng:
        impls["symbnmf rbg"] = symbnmf_fast(N, B, L, "rbg")
        impls["symbnmf unsafe_rbg"] = symbnmf_fast(N, B, L, "unsafe_rbg")
    if not a.skip_dense:
        impls["numpy dense"] = lambda K, s: numpy_dense(N, B, L, K, s)
        impls["naive JAX"] = naive_jax(N, B, L)
        slow = {"numpy dense", "naive JAX"}
    rows: dict[str, dict] = {}
    for name, f in impls.items():  # warm-up: compilation for the JAX ones
        wall, cpu, out = (
            _clock(lambda s, f=f: f(K, s), 0)
            if name not in ("numpy low-rank", "numpy dense")
            else (
                None,
                None,
                None,
            )
        )
        rows[name] = {"first_call_s": wall, "wall": [], "cpu": [], "grad": out}
    for r in range(a.repeat):
        for name, f in impls.items():
            if name in slow and r >= a.repeat_slow:
                continue
            wall, cpu, out = _clock(lambda s, f=f: f(K, s), r + 1)
            rows[name]["wall"].append(wall)
            rows[name]["cpu"].append(cpu)
            rows[name]["grad"] = out
    lo, hi = max(1, L // 10), L - max(1, L // 10)
    base = statistics.median(rows["symbnmf"]["wall"])
    base_cpu = statistics.median(rows["symbnmf"]["cpu"])
    result: dict = {
        "config": {
            "width": N,
            "batch_size": B,
            "depth": L,
            "networks": K,
            "activation": "relu",
            "dtype": "float32",
            "forward_and_backward": True,
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
            "devices": [str(d) for d in jax.devices()],
        },
        "implementations": {},
    }
    for name, r in rows.items():
        fit = fit_rate(r["grad"], lo, hi)
        med, cpu = statistics.median(r["wall"]), statistics.median(r["cpu"])
        result["implementations"][name] = {
            "runs": len(r["wall"]),
            "median_s": med,
            "min_s": min(r["wall"]),
            "median_cpu_s": cpu,
            "first_call_s": r["first_call_s"],
            "ratio_to_symbnmf": med / base,
            "cpu_ratio_to_symbnmf": cpu / base_cpu,
            "gradient_rate": fit.rate,
            "gradient_rate_stderr": fit.stderr,
        }
    if a.json:
        print(json.dumps(result))
        return 0
    c = result["config"]
    print(
        f"forward + backward, relu, N={N} B={B} L={L} networks={K}, float32, {c['cpu_count']} CPUs, "
        f"load average {c['load_average'][0]:.1f}, {len(c['devices'])} JAX device(s); interleaved rounds"
    )
    print(
        f"{'implementation':20s} {'runs':>4s} {'median s':>9s} {'min s':>7s} {'cpu s':>7s} {'first s':>8s} "
        f"{'x symbnmf':>9s} {'cpu x':>6s}   gradient rate (jackknife se)"
    )
    for name, r in result["implementations"].items():
        first = "-" if r["first_call_s"] is None else f"{r['first_call_s']:.2f}"
        print(
            f"{name:20s} {r['runs']:4d} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['median_cpu_s']:7.3f} {first:>8s} "
            f"{r['ratio_to_symbnmf']:9.2f} {r['cpu_ratio_to_symbnmf']:6.2f}   "
            f"{r['gradient_rate']:.4f} ± {r['gradient_rate_stderr']:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
