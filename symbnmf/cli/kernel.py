"""``symbnmf kernel``: the exact NNGP / NTK of a deep BN network on a batch of inputs (issue 11)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from symbnmf._errors import SymbnmfError
from symbnmf.cli.util import (
    add_activation_arguments,
    add_json_argument,
    atomic_output,
    check_output,
    parse_params,
    print_json,
)

NAME = "kernel"
HELP = (
    "exact infinite-width NNGP and NTK of a Dense -> BatchNorm -> ACT network (depth L, linear read-out) "
    "on a batch of inputs given as rows of a .npy file"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_activation_arguments(p)
    p.add_argument("--inputs", required=True, metavar="FILE.npy", help="the batch: a (B, features) array, B >= 4")
    p.add_argument("--depth", "-L", type=int, default=10, help="number of Dense-BN-ACT blocks (default 10)")
    p.add_argument("--eps", type=float, default=0.0, help="BN epsilon (default 0)")
    p.add_argument("--W-std", type=float, default=1.0, help="weight standard deviation (default 1)")
    p.add_argument("--b-std", type=float, default=0.0, help="bias standard deviation (default 0)")
    p.add_argument("--get", default="nngp,ntk", help="comma-separated: nngp, ntk (default both)")
    p.add_argument("-o", "--output", metavar="OUT.npy", help="save the kernels: shape (k, B, B) in the order of --get")
    p.add_argument("--force", action="store_true", help="overwrite OUT.npy")
    add_json_argument(p)


def _load_inputs(path: str) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SymbnmfError(f"--inputs {path}: no such file; give a .npy file with one input per row") from None
    except (ValueError, OSError) as exc:
        raise SymbnmfError(f"--inputs {path}: not a readable .npy array ({exc}); save it with numpy.save") from None
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise SymbnmfError(f"--inputs must hold a numeric (B, features) array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise SymbnmfError("--inputs contains NaN or inf")
    return x.astype(np.float64)


def run(args: argparse.Namespace) -> int:
    import jax

    from symbnmf.fast._compile_cache import enable_compilation_cache

    enable_compilation_cache()  # a repeated command loads its programs instead of compiling them

    from symbnmf._activations import get_activation
    from symbnmf.kernels.stax import bn_network

    get = tuple(g.strip() for g in args.get.split(",") if g.strip())
    if not get or any(g not in ("nngp", "ntk") for g in get):
        raise SymbnmfError(f"--get takes nngp, ntk or nngp,ntk; got {args.get!r}")
    if args.depth < 0:
        raise SymbnmfError(f"--depth must be >= 0, got {args.depth}")
    act = get_activation(args.activation, **parse_params(args.param))
    x = _load_inputs(args.inputs)
    out_path = check_output(args.output, args.force) if args.output else None

    bar: Any = None
    if not args.json:
        from tqdm import tqdm

        bar = tqdm(total=1, desc="kernel layers", file=sys.stderr, leave=False)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    with jax.enable_x64(True):
        net = bn_network(act, args.depth, eps=args.eps, W_std=args.W_std, b_std=args.b_std)
        kernels = net[2](x, get=get, progress=progress)
        arrays = {g: np.asarray(k) for g, k in zip(get, kernels)}
    if bar is not None:
        bar.close()
    if out_path is not None:
        with atomic_output(out_path, args.force, binary=True) as fh:
            np.save(fh, np.stack([arrays[g] for g in get]))
    B = x.shape[0]
    off = ~np.eye(B, dtype=bool)
    summary = {
        g: {"mean_diag": float(np.mean(np.diag(a))), "mean_offdiag": float(np.mean(a[off]))} for g, a in arrays.items()
    }
    if args.json:
        print_json(
            {
                "activation": act.label,
                "B": B,
                "depth": args.depth,
                "eps": args.eps,
                "W_std": args.W_std,
                "b_std": args.b_std,
                "get": list(get),
                "output": str(out_path) if out_path else None,
                "summary": summary,
                **{g: a.tolist() for g, a in arrays.items()},
            }
        )
        return 0
    print(f"{act.label}: depth {args.depth}, B = {B}, eps = {args.eps} (Dense-BN-{act.name} blocks, linear read-out)")
    for g, s in summary.items():
        print(f"  {g:4s}  mean diagonal {s['mean_diag']:.12g}   mean off-diagonal {s['mean_offdiag']:.12g}")
    if out_path:
        print(f"  saved {', '.join(get)} as a {(len(get), B, B)} array to {out_path}")
    else:
        np.set_printoptions(precision=6, suppress=True, linewidth=100)
        for g, a in arrays.items():
            print(f"{g}:\n{a}")
    return 0
