"""``symbnmf run``: the main job, end to end on defaults.

1. derive identity, ReLU and leaky ReLU in closed form (LaTeX + JSON);
2. certify every closed form against independent mpmath quadrature at 50 digits
   (B = 4, 5, 8, 16, 64);
3. generate a standalone JAX evaluator for ReLU and check it against the closed forms;
4. simulate finite-width BN networks (JAX Monte Carlo) and draw the validation figure: the
   per-layer growth of the squared gradient norm against lambda_G(B) (paper Fig. 1a).

Everything is written into ``--out`` (default ``symbnmf-run``), which must not exist unless
``--force`` is given. ``--json`` prints one summary object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from symbnmf._errors import OutputExistsError, OutputPathError, SymbnmfError
from symbnmf._output import shorten, track_temporary, untrack_temporary
from symbnmf.cli.util import add_json_argument, print_json

NAME = "run"
HELP = "main job: derive + certify + generate a JAX evaluator + Monte Carlo validation figure (defaults)"

DERIVE = ("identity", "relu", "leaky_relu")
CERTIFY = ("identity", "relu")
CERT_B = (4, 5, 8, 16, 64)
MC_B = (4, 8, 16, 32)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="symbnmf-run", help="output directory (default: symbnmf-run)")
    p.add_argument("--force", action="store_true", help="write into --out even if it exists (files are replaced)")
    p.add_argument("--dps", type=int, default=50, help="certification precision in digits (default 50)")
    p.add_argument(
        "--width", type=int, default=512, help="Monte Carlo widths N and 4N, extrapolated in 1/N (default 512)"
    )
    p.add_argument("--depth", type=int, default=40, help="Monte Carlo depth L (default 40)")
    p.add_argument("--networks", type=int, default=100, help="Monte Carlo networks per point (default 100)")
    p.add_argument("--seed", type=int, default=0)
    add_json_argument(p)


def _progress(total: int, quiet: bool):
    from symbnmf._progress import progress

    return progress(total, desc="symbnmf run", unit="step", disable=quiet)


def _check_out_dir(out: Path, force: bool) -> None:
    """--out must be a new directory (or, with --force, an existing one) inside an existing directory."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputPathError(f"--out {shorten(str(out))} exists and is not a directory; choose another --out")
    if out.exists() and not force:
        raise OutputExistsError(f"{shorten(str(out))} exists; pass --force to write into it, or choose another --out")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise OutputPathError(
            f"directory {shorten(str(parent))} does not exist; create it first or choose another --out"
        )


def _publish(staging: Path, out: Path) -> None:
    """Move the finished outputs from ``staging`` to ``out`` (a rename when ``out`` is new)."""
    if not out.exists():
        os.chmod(staging, 0o777 & ~_umask())
        os.rename(staging, out)
        return
    for src in sorted(staging.rglob("*")):
        dst = out / src.relative_to(staging)
        if src.is_dir():
            if dst.exists() and not dst.is_dir():
                raise OutputPathError(f"{shorten(str(dst))} is not a directory; remove it or choose another --out")
            dst.mkdir(exist_ok=True)
        else:
            if dst.is_symlink() or (dst.exists() and not dst.is_file()):
                raise OutputPathError(f"{shorten(str(dst))} is not a regular file; remove it or choose another --out")
            os.replace(src, dst)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def run(args: argparse.Namespace) -> int:
    final = Path(args.out)
    if args.dps < 15:
        raise SymbnmfError("--dps must be at least 15 for the certification")
    _check_out_dir(final, args.force)
    # Everything is written into a private staging directory next to --out and moved into place
    # only when complete: an error or Ctrl-C leaves no partial output that would block a rerun.
    try:
        staging = Path(
            tempfile.mkdtemp(prefix=f".{final.name[:50]}.", suffix=".tmp-symbnmf", dir=final.absolute().parent)
        )
    except OSError as exc:
        raise OutputPathError(f"cannot write next to --out {shorten(str(final))}: {exc.strerror}") from None
    track_temporary(staging)
    try:
        return _run(args, staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        untrack_temporary(staging)


def _run(args: argparse.Namespace, out: Path, final: Path) -> int:
    summary: dict[str, Any] = {"out": str(final), "steps": {}}
    steps = len(DERIVE) + len(CERTIFY) * len(CERT_B) + 1 + 2 * 2 * len(MC_B)
    bar = _progress(steps, args.json)
    t_all = time.perf_counter()

    # Everything that needs no closed form starts at once, beside the derivations (issue 14): the
    # Monte Carlo programs compile in one background thread and run in another (their theory
    # columns are attached once the closed forms exist), and the certification's mpmath
    # quadratures run in a worker process. XLA and mpmath release the GIL or run apart, so the
    # two cores stay busy from the first second; every result is the same as computed in turn.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from symbnmf.numeric._certify import certificate_quadrature

    mc = _MonteCarlo(args)
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        pending = [pool.submit(certificate_quadrature, act, B, args.dps) for act in CERTIFY for B in CERT_B]

        # 1. derivations
        from symbnmf.cli.scripts import write_derivation

        t0 = time.perf_counter()
        derived = {}
        (out / "derivations").mkdir(exist_ok=True)
        for act in DERIVE:
            bar.set_postfix_str(f"derive {act}")
            derived[act] = write_derivation(act, out / "derivations", act, force=True)
            bar.update()
        summary["steps"]["derive"] = {
            "seconds": round(time.perf_counter() - t0, 2),
            "files": [derived[a][k] for a in DERIVE for k in ("tex", "json")],
        }
        return _run_rest(args, out, final, summary, bar, t_all, pending, mc)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        mc.shutdown()


class _MonteCarlo:
    """The simulations of the validation figure, compiled and run in background threads.

    One thread compiles the programs in the order they run (:func:`precompile_simulation`; a
    simulation waits for its program instead of compiling it again), one thread runs them with
    ``theory=False``; :meth:`result` attaches the theory column (:func:`attach_theory`), which
    makes it the result ``simulate(..., theory=True)`` returns. One simulation at a time: two
    XLA:CPU executions started from two threads at once were seen to deadlock on a 2-core
    machine (both blocked inside XLA, most likely on its thread pool).
    """

    def __init__(self, args: argparse.Namespace) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from symbnmf.montecarlo.networks import precompile_simulation, simulate

        self.widths = (args.width, 4 * args.width)
        order = [(act, B, N) for B in MC_B for N in self.widths for act in ("relu", "identity")]
        self._compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="symbnmf-compile")
        self._runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="symbnmf-simulate")
        for act, B, N in order:
            self._compiler.submit(precompile_simulation, act, B, N, args.depth, args.networks)
        self._results = {
            (act, B, N): self._runner.submit(
                simulate, act, B, N, args.depth, args.networks, seed=args.seed + 1000 * B + N, theory=False
            )
            for act, B, N in order
        }

    def result(self, act: str, B: int, N: int) -> Any:
        from symbnmf.montecarlo.networks import attach_theory

        return attach_theory(self._results[act, B, N].result(), act)

    def shutdown(self) -> None:
        self._runner.shutdown(wait=False, cancel_futures=True)
        self._compiler.shutdown(wait=False, cancel_futures=True)


def _run_rest(
    args: argparse.Namespace,
    out: Path,
    final: Path,
    summary: dict[str, Any],
    bar,
    t_all: float,
    pending: list,
    mc: _MonteCarlo,
) -> int:
    # 3. generated evaluator
    bar.set_postfix_str("codegen relu")
    t0 = time.perf_counter()
    summary["steps"]["codegen"] = _codegen(out)
    summary["steps"]["codegen"]["seconds"] = round(time.perf_counter() - t0, 2)
    bar.update()

    # 4. Monte Carlo validation figure
    t0 = time.perf_counter()
    summary["steps"]["validation"] = _validation(out, args, bar, mc)
    summary["steps"]["validation"]["seconds"] = round(time.perf_counter() - t0, 2)

    # 2. (collected) certification: the worker's quadratures against the closed forms derived above
    from symbnmf.numeric._certify import certificate, closed_forms

    certs, seconds = [], 0.0
    for (act, B), fut in zip([(a, b) for a in CERTIFY for b in CERT_B], pending):
        bar.set_postfix_str(f"certify {act} B={B}")
        cert = certificate(act, B, args.dps, closed_forms(act), fut.result())
        certs.append(cert)
        seconds += cert.quadrature_seconds + cert.closed_form_seconds
        bar.update()
    cert_doc = [c.as_json() for c in certs]
    (out / "certificate.json").write_text(json.dumps(cert_doc, indent=1) + "\n")
    ok = all(c.ok for c in certs)
    summary["steps"]["certify"] = {
        "seconds": round(seconds, 2),
        "note": "quadratures run in a worker process, concurrently with the derivations, codegen and validation",
        "ok": ok,
        "dps": args.dps,
        "min_digits": round(min(c.min_digits for c in certs), 2),
        "file": str(out / "certificate.json"),
    }
    bar.close()
    summary["seconds"] = round(time.perf_counter() - t_all, 2)
    summary["ok"] = ok and summary["steps"]["codegen"]["ok"] and summary["steps"]["validation"]["ok"]
    # the paths recorded while staging name their final place
    summary = json.loads(json.dumps(summary).replace(json.dumps(str(out))[1:-1], json.dumps(str(final))[1:-1]))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    _publish(out, final)
    if args.json:
        print_json(summary)
    else:
        _print_summary(summary)
    return 0 if summary["ok"] else 1


def _codegen(out: Path) -> dict[str, Any]:
    from symbnmf._evaluate import evaluate
    from symbnmf.fast.codegen import jax_module, load_module

    src = jax_module("relu", target="jax", command="symbnmf run")
    path = out / "relu_evaluator.py"
    path.write_text(src)
    mod = load_module(src, "relu_evaluator")
    import jax

    with jax.enable_x64(True):
        import jax.numpy as jnp

        Bs = [4, 5, 8, 16, 64, 1024]
        got = mod.backward_G(jnp.asarray(Bs, dtype=jnp.float64))
    ref = [r["backward"]["G"] for r in evaluate("relu", Bs)]
    err = max(abs(float(g) - r) / abs(r) for g, r in zip(got, ref))
    return {"file": str(path), "max_rel_err_backward_G_float64": err, "ok": err < 1e-13}


def _validation(out: Path, args: argparse.Namespace, bar, mc: _MonteCarlo) -> dict[str, Any]:
    """Fig. 1a: per-layer growth of the squared gradient norm vs lambda_G(B).

    Finite width biases the measured rate by O(1/N) (docs/theory.md), so each point is simulated at
    widths N and 4N and extrapolated linearly in 1/N; the z-score of the extrapolation against
    the closed form is the test of the theory (|z| < 4 passes). The simulations were started by
    ``mc`` (:class:`_MonteCarlo`) at the beginning of the job.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from symbnmf._evaluate import evaluate
    from symbnmf.montecarlo.stats import extrapolate_width

    return _validation_loop(out, args, bar, mc.widths, plt, np, evaluate, mc.result, extrapolate_width)


def _validation_loop(out, args, bar, widths, plt, np, evaluate, simulated, extrapolate_width) -> dict[str, Any]:
    rows = []
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    Bgrid = np.arange(4, 65)
    for act, color in (("relu", "C0"), ("identity", "C1")):
        theory = [r["backward"]["G"] for r in evaluate(act, list(Bgrid))]
        ax.plot(Bgrid, theory, color=color, lw=1.6, label=f"{act}: theory $\\lambda^\\downarrow_G(B)$")
        pts: dict[int, list[tuple[Any, Any]]] = {N: [] for N in widths}
        ext = []
        for B in MC_B:
            runs = []
            for N in widths:
                bar.set_postfix_str(f"simulate {act} B={B} N={N}")
                g = simulated(act, B, N).summary["gradient_rate"]
                runs.append(g)
                pts[N].append((g["measured"], g["stderr"]))
                bar.update()
            m, se = extrapolate_width(widths, [g["measured"] for g in runs], [g["stderr"] for g in runs])
            th = runs[0]["theory"]
            z = (m - th) / se if th is not None and se > 0 else None
            ext.append((m, se))
            rows.append(
                {
                    "activation": act,
                    "B": B,
                    "theory": th,
                    "measured": m,
                    "stderr": se,
                    "z": z,
                    "by_width": {str(N): {k: g[k] for k in ("measured", "stderr", "z")} for N, g in zip(widths, runs)},
                }
            )
        off = {widths[0]: 0.94, widths[1]: 0.97}
        for N in widths:
            m = np.array(pts[N])
            ax.errorbar(
                np.array(MC_B) * off[N],
                m[:, 0],
                yerr=2 * m[:, 1],
                fmt="x",
                ms=4,
                color=color,
                alpha=0.5,
                capsize=2,
                label=f"{act}: Monte Carlo N={N}",
            )
        e = np.array(ext)
        ax.errorbar(
            MC_B,
            e[:, 0],
            yerr=2 * e[:, 1],
            fmt="o",
            color=color,
            capsize=3,
            label=f"{act}: extrapolated N$\\to\\infty$ (±2 s.e.)",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("per-layer growth of $E\\|\\partial \\ell/\\partial x^l\\|^2$")
    ax.set_title(f"Gradient explosion in BN networks ({args.networks} networks, depth {args.depth})")
    ax.axhline(math.pi / (math.pi - 1), color="C0", ls=":", lw=1, label="ReLU limit $\\pi/(\\pi-1)$")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, ncol=2)
    fig.tight_layout()
    png = out / "gradient_rate_vs_batch.png"
    fig.savefig(png)
    plt.close(fig)
    zs = [abs(r["z"]) for r in rows if r["z"] is not None]
    return {
        "figure": str(png),
        "widths": list(widths),
        "points": rows,
        "max_abs_z": max(zs) if zs else None,
        "ok": bool(zs) and max(zs) < 4,
    }


def _print_summary(s: dict[str, Any]) -> None:
    st = s["steps"]
    print(f"symbnmf run -> {s['out']} ({s['seconds']} s)")
    print(f"  derive:     {len(st['derive']['files'])} files in {st['derive']['seconds']} s")
    print(
        f"  certify:    ok={st['certify']['ok']}, min agreeing digits {st['certify']['min_digits']} at dps "
        f"{st['certify']['dps']} ({st['certify']['seconds']} s) -> {st['certify']['file']}"
    )
    print(
        f"  codegen:    {st['codegen']['file']} (max rel. error vs closed form {st['codegen']['max_rel_err_backward_G_float64']:.1e})"
    )
    v = st["validation"]
    print(f"  validation: {v['figure']} (widths {v['widths']} extrapolated to N -> oo; max |z| = {v['max_abs_z']:.2f})")
    for r in v["points"]:
        print(
            f"      {r['activation']:>8} B={r['B']:>3}: N->oo {r['measured']:.4f} ± {r['stderr']:.4f}, "
            f"theory {r['theory']:.4f}, z = {r['z']:+.2f}"
        )
    print("  ok" if s["ok"] else "  NOT OK: see summary.json")
