"""``symbnmf check [ACT ...]``: certify every closed form against independent quadrature."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Any

from symbnmf.cli.util import add_json_argument, parse_params, print_json

NAME = "check"
HELP = (
    "certify every closed-form quantity of ACT (default: identity, relu, leaky_relu(0.1)) against "
    "independent mpmath quadrature at --dps digits; exit status 1 if any disagrees beyond 10^(-dps+5)"
)

DEFAULT_ACTIVATIONS = ("identity", "relu", "leaky_relu(0.1)")
DEFAULT_BATCH_SIZES = (4, 5, 8, 16, 64)


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--jobs 0`` is refused, not silently read as 'all cores')."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text[:40]!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "activation",
        nargs="*",
        metavar="ACT",
        help="activations with closed forms (default: identity relu 'leaky_relu(0.1)')",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="bind an activation parameter, e.g. --param a=0.2 (repeatable)",
    )
    p.add_argument(
        "--batch-size",
        "-B",
        nargs="+",
        default=None,
        metavar="B",
        help="batch sizes (integers >= 4; default 4 5 8 16 64)",
    )
    p.add_argument("--dps", type=int, default=50, metavar="N", help="decimal digits (default 50)")
    p.add_argument(
        "--jobs",
        "-j",
        type=_positive_int,
        default=None,
        metavar="N",
        help="worker processes for the derivations and quadratures (default: number of CPU cores, at most one "
        "per case); the output is the same for any N",
    )
    g = p.add_argument_group(
        "BN with eps > 0 (issue 12): certify the eps closed forms (symbnmf.derive_eps: identity, relu, leaky_relu) "
        "against the independent mpmath eps path"
    )
    g.add_argument("--eps", default=None, metavar="E", help="BN epsilon > 0 (default: the eps = 0 check)")
    g.add_argument("--weight-var", default=None, metavar="S", help="sigma_w^2 > 0 (default 1)")
    g.add_argument("--gamma", default=None, metavar="G", help="BN gamma > 0 (default 1)")
    g.add_argument("--beta", default=None, metavar="b", help="BN beta (closed forms exist only for beta = 0)")
    add_json_argument(p)


def _derive_task(acts: list) -> tuple[list[dict[str, Any]], float]:
    """The closed forms of every activation (disk cache or derived, in one process: the
    derivations share SymPy's caches) and the wall seconds it took."""
    from symbnmf.numeric._certify import closed_forms

    t0 = time.perf_counter()
    forms = [closed_forms(act) for act in acts]
    return forms, time.perf_counter() - t0


def _quadrature_task(args: tuple[Any, int, int]) -> tuple[dict[str, Any], float]:
    """The independent mpmath quadrature of one case (needs no closed form)."""
    from symbnmf.numeric._certify import certificate_quadrature

    act, B, dps = args
    return certificate_quadrature(act, B, dps)


def _certify_cases(acts: list, Bs: list[int], dps: int, jobs: int, bar: Any) -> tuple[list[dict[str, Any]], float]:
    """Certificates of every (activation, B) in the order given, and the derivations' seconds.

    With ``jobs`` > 1 the derivations (one task: they share SymPy's caches) and the quadratures
    (which need no closed form) all run in ``jobs`` worker processes, the derivations first, then
    the quadratures largest B first (the longest tasks first keeps both cores busy to the end);
    each certificate is assembled in this process as soon as its quadrature and the closed forms
    are there. The certificates are deterministic functions of (activation, B, dps), so the
    output is the same for any ``jobs`` (tested), only the timing fields differ.
    """
    from symbnmf.numeric._certify import certificate

    cases = [(i, j) for i in range(len(acts)) for j in range(len(Bs))]
    certs: dict[tuple[int, int], dict[str, Any]] = {}
    forms: dict[int, dict[str, Any]] = {}
    t_derive = 0.0

    def finish(i: int, j: int, quad: tuple[dict[str, Any], float]) -> None:
        certs[i, j] = certificate(acts[i], Bs[j], dps, forms[i], quad).as_json()
        bar.update(1)

    if jobs == 1:
        derived, t_derive = _derive_task(acts)
        forms.update(enumerate(derived))
        for i, j in cases:
            bar.set_postfix_str(f"{acts[i].label} B={Bs[j]}")
            finish(i, j, _quadrature_task((acts[i], Bs[j], dps)))
        return [certs[c] for c in cases], t_derive
    order = sorted(cases, key=lambda c: -Bs[c[1]])  # stable: activations in the order given
    waiting: list[tuple[int, int, tuple[dict[str, Any], float]]] = []
    # what every worker needs, loaded once here and inherited (fork) rather than once per worker
    import symbnmf.symbolic._derive  # noqa: F401
    from symbnmf.symbolic._quantities import abstract_definitions

    abstract_definitions()
    # fork is cheapest (the workers inherit what is loaded above), but not safe once JAX's
    # threads run in this process (``check`` itself never imports JAX; an embedding caller may)
    ctx = multiprocessing.get_context("spawn") if "jax" in sys.modules else None
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures: dict[Future, tuple[int, int]] = {pool.submit(_derive_task, acts): (-1, -1)}
        try:
            for i, j in order:
                futures[pool.submit(_quadrature_task, (acts[i], Bs[j], dps))] = (i, j)
            for fut in as_completed(futures):
                i, j = futures[fut]
                if i < 0:
                    derived, t_derive = fut.result()  # NoClosedFormError: cancel the rest, exit 2
                    forms.update(enumerate(derived))
                    for ii, jj, quad in waiting:
                        finish(ii, jj, quad)
                elif forms:
                    finish(i, j, fut.result())
                else:
                    waiting.append((i, j, fut.result()))
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return [certs[c] for c in cases], t_derive


def _worst_and_flag(result: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The least-agreeing quantity of one certificate, and the text naming any that disagree."""
    worst = min(result["quantities"], key=lambda q: q["digits"])
    bad = [q["name"] for q in result["quantities"] if not q["agrees"]]
    return worst, "" if result["ok"] else "   DISAGREES: " + ", ".join(bad)


def run(args: argparse.Namespace) -> int:
    from symbnmf._activations import get_activation
    from symbnmf._conventions import check_batch_size
    from symbnmf._errors import SymbnmfError
    from symbnmf._progress import progress
    from symbnmf.numeric._certify import require_closed_form

    t0 = time.perf_counter()
    if not isinstance(args.dps, int) or not 10 <= args.dps <= 1000:
        raise SymbnmfError(f"--dps must be an integer between 10 and 1000, got {args.dps}")
    params = parse_params(args.param)
    names = args.activation or list(DEFAULT_ACTIVATIONS)
    acts = [get_activation(n, **params) if params else get_activation(n) for n in names]
    Bs = [check_batch_size(_int(b)) for b in (args.batch_size or DEFAULT_BATCH_SIZES)]
    bn = {k: getattr(args, k, None) for k in ("eps", "weight_var", "gamma", "beta")}
    if any(v is not None for v in bn.values()):
        return _run_eps(args, acts, Bs, bn, t0)
    for act in acts:
        require_closed_form(act)  # NoClosedFormError for tanh & co. (exit 2) before any work
    ncases = len(acts) * len(Bs)
    jobs = args.jobs if args.jobs else (os.cpu_count() or 1)
    jobs = max(1, min(jobs, ncases))
    with progress(ncases, desc="check", unit="case", disable=args.json) as bar:
        results, t_derive = _certify_cases(acts, Bs, args.dps, jobs, bar)
    ok = all(r["ok"] for r in results)
    min_digits = min((r["min_digits"] for r in results), default=None)
    seconds = time.perf_counter() - t0
    doc = {
        "dps": args.dps,
        "tolerance": f"|closed form - quadrature| <= 1e-{args.dps - 5} * max(1, |closed form|)",
        "ok": ok,
        "min_digits": min_digits,
        "activations": [a.label for a in acts],
        "batch_sizes": Bs,
        "jobs": jobs,
        "seconds": round(seconds, 2),
        "derive_seconds": round(t_derive, 2),
        "results": results,
    }
    if args.json:
        print_json(doc)
    else:
        print(
            f"# closed form vs independent quadrature at {args.dps} digits "
            f"(tolerance 1e-{args.dps - 5} relative); digits = agreeing significant digits"
        )
        print(f"{'activation':>20} {'B':>4} {'min digits':>10} {'quad s':>7}  worst quantity")
        for r in results:
            worst, flag = _worst_and_flag(r)
            wname = (
                worst["name"] if worst["digits"] < args.dps else f"(all >= {args.dps}: agreement at working precision)"
            )
            print(
                f"{r['activation']:>20} {r['B']:>4} {r['min_digits']:>10.1f} {r['quadrature_seconds']:>7.2f}  {wname}{flag}"
            )
        print(
            f"{'all certified' if ok else 'FAILED'}: min {min_digits} digits, {seconds:.1f} s wall "
            f"({jobs} process{'es' if jobs > 1 else ''}, derivations {t_derive:.1f} s)"
        )
    return 0 if ok else 1


def _run_eps(args: argparse.Namespace, acts: list, Bs: list[int], bn: dict, t0: float) -> int:
    """``check --eps``: closed forms of the eps > 0 theory against the mpmath eps path (issue 12)."""
    from symbnmf._errors import NoClosedFormError, SymbnmfError
    from symbnmf._progress import progress
    from symbnmf.numeric._epsforms import certify_eps
    from symbnmf.numeric._epsilon import check_bn_parameters
    from symbnmf.symbolic._epsforms import in_family

    e, s, g, b = check_bn_parameters(
        0 if bn["eps"] is None else bn["eps"],
        1 if bn["weight_var"] is None else bn["weight_var"],
        1 if bn["gamma"] is None else bn["gamma"],
        0 if bn["beta"] is None else bn["beta"],
    )
    if not e > 0:
        raise SymbnmfError("check with --weight-var/--gamma/--beta needs --eps E > 0 (e.g. --eps 0.01)")
    for act in acts:
        act.require_bound()
        if not in_family(act) or b != 0 or not g > 0:
            raise NoClosedFormError(
                f"no eps > 0 closed form to check for {act.label!r} (only identity, relu, leaky_relu with beta = 0, "
                "gamma > 0); evaluate it with `symbnmf eval ACT -B B --eps E --method quadrature`"
            )
    results: list[dict[str, Any]] = []
    with progress(len(acts) * len(Bs), desc="check --eps", unit="case", disable=args.json) as bar:
        for act in acts:
            for B in Bs:
                bar.set_postfix_str(f"{act.label} B={B}")
                results.append(certify_eps(act, B, args.dps, eps=e, weight_var=s, gamma=g).as_json())
                bar.update(1)
    ok = all(r["ok"] for r in results)
    min_digits = min((r["min_digits"] for r in results), default=None)
    seconds = time.perf_counter() - t0
    doc = {
        "dps": args.dps,
        "eps": float(e),
        "weight_var": float(s),
        "gamma": float(g),
        "beta": float(b),
        "tolerance": f"|closed form - mpmath eps path| <= 1e-{args.dps - 5} * max(1, |closed form|) at mu = mu*",
        "ok": ok,
        "min_digits": min_digits,
        "activations": [a.label for a in acts],
        "batch_sizes": Bs,
        "seconds": round(seconds, 2),
        "results": results,
    }
    if args.json:
        print_json(doc)
    else:
        print(
            f"# eps > 0 closed forms (derive_eps) vs the mpmath eps path at {args.dps} digits "
            f"(eps={bn['eps']}, sigma_w^2={float(s)!r}, gamma={float(g)!r})"
        )
        print(f"{'activation':>60} {'B':>4} {'min digits':>10}  worst quantity")
        for r in results:
            worst, flag = _worst_and_flag(r)
            print(f"{r['activation']:>60} {r['B']:>4} {r['min_digits']:>10.1f}  {worst['name']}{flag}")
        print(f"{'all certified' if ok else 'FAILED'}: min {min_digits} digits, {seconds:.1f} s wall")
    return 0 if ok else 1


def _int(b: Any) -> Any:
    try:
        f = float(b)
    except (TypeError, ValueError):
        return b
    return int(f) if f.is_integer() else f
