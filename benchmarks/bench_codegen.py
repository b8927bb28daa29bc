"""Benchmark: generated JAX evaluators vs sympy.lambdify, their accuracy, and the fast grid.

Run: ``python benchmarks/bench_codegen.py [--n 1000000] [--json]``. Every ratio printed is
measured in this run, on this machine (best of ``--repeat`` timings after a warm-up call).

1. lambda_G-down for ReLU (the derived closed form) on n values of B: the generated JAX module
   (jit, float64) vs ``sympy.lambdify(modules="numpy")`` vs ``sympy2jax`` (optional: if it is
   not importable the row says so and is skipped). Goal: >= 2x lambdify-numpy throughput.
2. Accuracy in ulps against mpmath (50 digits) on 300 values of B. Goal: <= 4 ulp in float64.
3. The general-activation grid: all quantities of tanh(g*x) for 100 values of BN's gamma x 16
   batch sizes by the fast JAX quadrature, after jit. Goal: <= 2 s on 2 cores. Also timed:
   ReLU with BN's beta, relu(x + b), 100 beta x 16 B (kinks away from 0: iterated scheme).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import mpmath
import numpy as np
import sympy as sp


def best_time(fn, repeat: int) -> float:
    fn()  # warm-up (jit compilation)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10**6, help="number of B values (default 1e6)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp

    import symbnmf
    from symbnmf import codegen
    from symbnmf.symbolic._algebra import B

    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    results: dict = {"n": args.n, "device": str(jax.devices()[0]), "rows": {}}

    forms, _, _ = codegen.closed_forms("relu", ["backward.G"])
    expr = forms["backward.G"]
    mod = codegen.load_module(codegen.jax_module("relu", ["backward.G"]))
    rng = np.random.default_rng(0)
    Bs = rng.integers(4, 10**4, size=args.n).astype(np.float64)

    with jax.enable_x64(True):
        f_gen = jax.jit(mod.backward_G)
        Bj = jnp.asarray(Bs)
        t_gen = best_time(lambda: f_gen(Bj).block_until_ready(), args.repeat)
        f_np = sp.lambdify(B, expr, modules="numpy")
        t_np = best_time(lambda: f_np(Bs), args.repeat)
        results["rows"]["generated_jax"] = {"seconds": t_gen, "values_per_s": args.n / t_gen}
        results["rows"]["lambdify_numpy"] = {"seconds": t_np, "values_per_s": args.n / t_np}
        try:
            import sympy2jax  # type: ignore[import-not-found]

            m = sympy2jax.SymbolicModule([expr])
            f_s2j = jax.jit(lambda b: m(B=b)[0])
            t_s2j = best_time(lambda: f_s2j(Bj).block_until_ready(), args.repeat)
            results["rows"]["sympy2jax"] = {"seconds": t_s2j, "values_per_s": args.n / t_s2j}
        except ImportError:
            results["rows"]["sympy2jax"] = {"skipped": "sympy2jax is not importable (pip install sympy2jax)"}

        # accuracy in ulps vs mpmath at 50 digits
        sample = np.unique(np.concatenate([np.arange(4, 40), np.geomspace(40, 10**7, 264).round()])).astype(np.float64)
        with mpmath.workdps(50):
            f_mp = sp.lambdify(B, expr, modules="mpmath")
            ref = np.array([float(f_mp(mpmath.mpf(int(b)))) for b in sample])
        ulp = lambda got: float(np.max(np.abs(np.asarray(got, np.float64) - ref) / np.spacing(np.abs(ref))))
        results["accuracy_ulps"] = {
            "generated_jax": ulp(f_gen(jnp.asarray(sample))),
            "lambdify_numpy": ulp(f_np(sample)),
            "B_range": [float(sample.min()), float(sample.max())],
        }

    # the fast general-activation grid
    ev = symbnmf.FastEvaluator("tanh(g*x)")
    gam = np.linspace(0.05, 2.0, 100)
    Bgrid = list(range(4, 20))
    t_first = time.perf_counter()
    ev(Bgrid, g=gam)
    t_first = time.perf_counter() - t_first
    t_grid = best_time(lambda: ev(Bgrid, g=gam), max(1, args.repeat // 2))
    results["grid_tanh_100x16"] = {"seconds_after_jit": t_grid, "seconds_first_call": t_first}
    ev = symbnmf.FastEvaluator("relu(x + b)")  # ReLU with BN's beta: kink at -beta (iterated scheme)
    beta = np.linspace(0.0, 2.0, 100)
    t_first = time.perf_counter()
    ev(Bgrid, b=beta)
    t_first = time.perf_counter() - t_first
    t_beta = best_time(lambda: ev(Bgrid, b=beta), max(1, args.repeat // 2))
    results["grid_relu_beta_100x16"] = {"seconds_after_jit": t_beta, "seconds_first_call": t_first}

    r = results["rows"]
    results["ratios"] = {"generated_vs_lambdify_numpy": r["lambdify_numpy"]["seconds"] / r["generated_jax"]["seconds"]}
    if "seconds" in r["sympy2jax"]:
        results["ratios"]["generated_vs_sympy2jax"] = r["sympy2jax"]["seconds"] / r["generated_jax"]["seconds"]

    log(f"lambda_G-down of ReLU on {args.n} values of B ({results['device']}, float64, best of {args.repeat}):")
    for name, row in r.items():
        if "seconds" in row:
            log(f"  {name:16s} {row['seconds'] * 1e3:9.2f} ms  {row['values_per_s'] / 1e6:8.1f} M values/s")
        else:
            log(f"  {name:16s} skipped: {row['skipped']}")
    for k, v in results["ratios"].items():
        log(f"  ratio {k}: {v:.2f}x (goal >= 2x vs lambdify-numpy)")
    acc = results["accuracy_ulps"]
    log(
        f"accuracy vs mpmath (50 digits), {len(sample)} values of B in [4, 1e7]: generated {acc['generated_jax']:.0f} ulp, "
        f"lambdify-numpy {acc['lambdify_numpy']:.0f} ulp (goal <= 4)"
    )
    g = results["grid_tanh_100x16"]
    log(
        f"tanh(g*x) all quantities, 100 gamma x 16 B: {g['seconds_after_jit']:.3f} s after jit "
        f"(first call {g['seconds_first_call']:.2f} s; goal <= 2 s)"
    )
    g = results["grid_relu_beta_100x16"]
    log(
        f"relu(x + b) all quantities, 100 beta x 16 B (kinks off 0): {g['seconds_after_jit']:.3f} s after jit "
        f"(first call {g['seconds_first_call']:.2f} s)"
    )
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
