"""``symbnmf check [ACT ...]``: certify every closed form against independent quadrature."""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
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
        help="worker processes (default: number of CPU cores, at most one per task)",
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


def _task(args: tuple[Any, int, int, dict]) -> dict[str, Any]:
    from symbnmf.numeric._certify import certify

    act, B, dps, forms = args
    return certify(act, B, dps, forms=forms).as_json()


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
    from symbnmf.numeric._certify import closed_forms

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
    forms: dict[str, dict] = {}
    for act in acts:
        act.require_bound()
        forms[act.label] = closed_forms(act)  # NoClosedFormError for tanh & co. (exit 2)
    t_derive = time.perf_counter() - t0
    tasks = [(act, B, args.dps, forms[act.label]) for act in acts for B in Bs]
    jobs = args.jobs if args.jobs else (os.cpu_count() or 1)
    jobs = max(1, min(jobs, len(tasks)))
    results: list[dict[str, Any]] = []
    with progress(len(tasks), desc="check", unit="case", disable=args.json) as bar:
        if jobs == 1:
            for t in tasks:
                bar.set_postfix_str(f"{t[0].label} B={t[1]}")
                results.append(_task(t))
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                for r in pool.map(_task, tasks):
                    results.append(r)
                    bar.update(1)
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
