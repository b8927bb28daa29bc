"""Record the outputs of a fixed list of symbnmf commands, for before/after comparisons.

Used to prove that a refactoring changes no behaviour: run it on two checkouts and diff the
two output folders (``diff -r``). Timing fields ("seconds", "time", "elapsed", ...) are
replaced by a placeholder, everything else is kept byte for byte, including stderr of failing
commands and the files the commands write.

    python dev/snapshot_cli.py OUTDIR [--quick]

The package imported is whatever ``python -m symbnmf`` resolves (set PYTHONPATH to compare
another checkout with the same environment). Derivations run with a private, empty cache.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TIMING_KEYS = re.compile(r"(seconds|time|elapsed|wall|_s$|duration|version|cache)", re.I)

COMMANDS: list[tuple[str, list[str]]] = [
    ("derive_identity", ["derive", "identity", "--json"]),
    ("derive_relu", ["derive", "relu", "--json"]),
    ("derive_leaky", ["derive", "leaky_relu", "--json"]),
    ("derive_relu_text", ["derive", "relu"]),
    ("derive_relu_latex", ["derive", "relu", "--latex", "{out}/relu.tex", "--json"]),
    ("eval_relu", ["eval", "relu", "-B", "4", "8", "64", "--json"]),
    ("eval_relu_text", ["eval", "relu", "-B", "4", "8"]),
    ("eval_relu_dps", ["eval", "relu", "-B", "4", "8", "--dps", "30", "--json"]),
    ("eval_identity", ["eval", "identity", "-B", "4", "5", "100", "--json"]),
    ("eval_tanh", ["eval", "tanh", "-B", "4", "8", "--json"]),
    ("eval_gelu_fast", ["eval", "gelu", "-B", "4", "8", "16", "--fast", "--json"]),
    ("check_relu", ["check", "relu", "-B", "4", "8", "--json"]),
    ("codegen_relu", ["codegen", "relu", "-o", "{out}/relu_eval.py", "--json"]),
    ("codegen_leaky_np", ["codegen", "leaky_relu", "--target", "numpy", "-o", "{out}/leaky_np.py", "--json"]),
    ("simulate_relu", ["simulate", "relu", "-B", "8", "--width", "128", "--depth", "10", "--networks", "8", "--json"]),
    ("err_B3", ["eval", "relu", "-B", "3"]),
    ("err_unknown", ["eval", "nosuch", "-B", "4"]),
    ("err_exists", ["codegen", "relu", "-o", "{out}/relu_eval.py"]),
]
SLOW: list[tuple[str, list[str]]] = [
    ("run", ["run", "--out", "{out}/run", "--json"]),
]


def scrub(obj):
    if isinstance(obj, dict):
        return {k: ("<scrubbed>" if TIMING_KEYS.search(k) else scrub(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


def normalise(text: str, out: Path) -> str:
    text = text.replace(str(out), "<OUT>")
    try:
        return json.dumps(scrub(json.loads(text)), indent=1, sort_keys=True) + "\n"
    except ValueError:
        text = re.sub(r"\d+\.\d+ ?s\b", "<t>s", text)
        return re.sub(r"\r[^\n]*", "", text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--quick", action="store_true", help="skip `symbnmf run`")
    args = ap.parse_args()
    out = Path(args.outdir).resolve()
    if out.exists():
        shutil.rmtree(out)
    (out / "files").mkdir(parents=True)
    env = dict(os.environ, SYMBNMF_CACHE_DIR=tempfile.mkdtemp(prefix="symbnmf-snap-"))
    cmds = COMMANDS + ([] if args.quick else SLOW)
    for name, argv in cmds:
        argv = [a.format(out=out / "files") for a in argv]
        p = subprocess.run([sys.executable, "-m", "symbnmf", *argv], capture_output=True, text=True, env=env)
        (out / f"{name}.stdout").write_text(normalise(p.stdout, out / "files"))
        (out / f"{name}.stderr").write_text(normalise(p.stderr, out / "files") if p.returncode else "")
        (out / f"{name}.rc").write_text(f"{p.returncode}\n")
        print(f"{name}: rc={p.returncode}", flush=True)
    for f in sorted((out / "files").rglob("*")):
        if f.is_file() and f.suffix in (".json",):
            f.write_text(normalise(f.read_text(), out / "files"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
