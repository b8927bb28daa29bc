"""Benchmark: Monte Carlo of batch-normalized networks, forward + backward, three ways, one run.

* ``numpy``: plain numpy, dense N×N Gaussian weights drawn per layer, hand-written backprop.
* ``naive JAX``: dense Gaussian weights drawn per layer inside ``lax.scan``, ``jax.grad``,
  vmapped over networks, jit-compiled (bound by random-number generation).
* ``symbnmf fast``: :func:`symbnmf.montecarlo.run.run_networks` with the exact O(N·B²) Gaussian
  sampler (same law; custom-VJP layer; per-layer gradient norms recorded by ``jax.grad``).

All three compute, for every network, ‖∂loss/∂x^l‖² at every layer for a random linear readout.
Times are wall-clock medians of ``--repeat`` warm runs (JAX compilation excluded, reported apart
as the first call; numpy is timed once);
the ratios printed are between times measured in this same run.  The fitted gradient growth
rates of the three are printed too, as a check that they simulate the same thing.

    python benchmarks/bench_montecarlo.py            # N=512, B=8, L=50, 100 networks, float32
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

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def numpy_networks(N: int, B: int, L: int, K: int, seed: int) -> np.ndarray:
    """(K, L+1) squared gradient norms, dense float32 numpy, ReLU, BN (eps = 0)."""
    rng = np.random.default_rng(seed)
    out = np.empty((K, L + 1))
    scale = np.float32(1 / np.sqrt(N))
    for k in range(K):
        x = rng.standard_normal((N, B), dtype=np.float32)
        R = rng.standard_normal((N, B), dtype=np.float32)
        Ws, ys, sds, pre = [], [], [], []
        for _ in range(L):
            W = rng.standard_normal((N, N), dtype=np.float32) * scale
            h = W @ x
            c = h - h.mean(1, keepdims=True)
            sd = np.sqrt((c * c).mean(1, keepdims=True))
            y = c / sd
            Ws.append(W), ys.append(y), sds.append(sd), pre.append(y)
            x = np.maximum(y, 0)
        g = R
        out[k, L] = float(np.sum(g * g))
        for l in range(L - 1, -1, -1):
            gy = g * (pre[l] > 0)
            y, sd = ys[l], sds[l]
            # d/dh of (h - mean)/sd: (gy - mean(gy) - y * mean(gy * y)) / sd
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


def fast_jax(N: int, B: int, L: int):
    import symbnmf
    from symbnmf.montecarlo.run import NetConfig, run_networks

    phi = symbnmf.get_activation("relu").numeric("jax")
    cfg = NetConfig(N, B, L, 0, "fast", "gaussian", "float32", 1.0, 0.0, 0.0, 0.0, "iid", True, "relu")
    return lambda K, seed: run_networks(cfg, phi, seed, K)["grad_x"]


def timed(fn, repeat: int, warmup: bool = True) -> tuple[float | None, list[float], np.ndarray]:
    first = None
    if warmup:
        t0 = time.perf_counter()
        out = fn(0)  # warm-up (compilation for JAX)
        first = time.perf_counter() - t0
    times = []
    for r in range(repeat):
        t0 = time.perf_counter()
        out = fn(r + 1)
        times.append(time.perf_counter() - t0)
    return first, times, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", "-N", type=int, default=512)
    p.add_argument("--batch-size", "-B", type=int, default=8)
    p.add_argument("--depth", "-L", type=int, default=50)
    p.add_argument("--networks", "-K", type=int, default=100)
    p.add_argument("--repeat", type=int, default=5, help="timed warm runs of the fast simulator (default 5)")
    p.add_argument("--repeat-slow", type=int, default=1, help="timed warm runs of the naive JAX one (default 1)")
    p.add_argument("--skip-numpy", action="store_true")
    p.add_argument("--quick", action="store_true", help="N=128, L=10, K=20, one repeat")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = p.parse_args(argv)
    if a.quick:
        a.width, a.depth, a.networks, a.repeat, a.repeat_slow = 128, 10, 20, 1, 1
    import jax

    from symbnmf.montecarlo.stats import fit_rate

    N, B, L, K = a.width, a.batch_size, a.depth, a.networks
    impls = {"symbnmf fast": fast_jax(N, B, L), "naive JAX": naive_jax(N, B, L)}
    rows = {}
    reps = {"symbnmf fast": a.repeat, "naive JAX": a.repeat_slow}
    for name, f in impls.items():
        first, times, out = timed(lambda s, f=f: f(K, s), reps[name])
        rows[name] = {"median_s": statistics.median(times), "times_s": times, "first_call_s": first, "grad": out}
    if not a.skip_numpy:
        first, times, out = timed(lambda s: numpy_networks(N, B, L, K, s), 1, warmup=False)  # nothing to warm up
        rows["numpy"] = {"median_s": statistics.median(times), "times_s": times, "first_call_s": first, "grad": out}
    lo, hi = max(1, L // 10), L - max(1, L // 10)
    fast_t = rows["symbnmf fast"]["median_s"]
    result = {
        "config": {
            "width": N,
            "batch_size": B,
            "depth": L,
            "networks": K,
            "activation": "relu",
            "dtype": "float32",
            "forward_and_backward": True,
            "cpu_count": os.cpu_count(),
            "devices": [str(d) for d in jax.devices()],
        },
        "implementations": {},
    }
    for name, r in rows.items():
        fit = fit_rate(r["grad"], lo, hi)
        result["implementations"][name] = {
            "median_s": r["median_s"],
            "min_s": min(r["times_s"]),
            "times_s": r["times_s"],
            "first_call_s": r["first_call_s"],
            "ratio_to_fast": r["median_s"] / fast_t,
            "gradient_rate": fit.rate,
            "gradient_rate_stderr": fit.stderr,
        }
    if a.json:
        print(json.dumps(result))
        return 0
    c = result["config"]
    print(
        f"forward + backward, relu, N={N} B={B} L={L} networks={K}, float32, {c['cpu_count']} CPUs, {len(c['devices'])} JAX device(s)"
    )
    print(
        f"ratios 'x fast' are medians over the fast simulator's median; runs: fast {a.repeat}, naive JAX {a.repeat_slow}, numpy 1"
    )
    print(
        f"{'implementation':16s} {'median s':>10s} {'min s':>8s} {'first call s':>13s} {'x fast':>8s}   gradient rate (jackknife se)"
    )
    for name, r in result["implementations"].items():
        first = "—" if r["first_call_s"] is None else f"{r['first_call_s']:.2f}"
        print(
            f"{name:16s} {r['median_s']:10.3f} {r['min_s']:8.3f} {first:>13s} {r['ratio_to_fast']:8.1f}   "
            f"{r['gradient_rate']:.4f} ± {r['gradient_rate_stderr']:.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
