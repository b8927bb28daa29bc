"""The package layout is the pipeline: imports point down the stage order, never up (issue 9).

Stages, in order: base (activations, conventions, errors) → symbolic → numeric → fast → the
``evaluate`` front door → montecarlo → kernels → experiments → cli. A module may import its own
stage and the stages before it. Every import counts, also the deferred ones inside functions.
``symbolic`` and ``numeric`` never import JAX.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "symbnmf"

ORDER = ["base", "symbolic", "numeric", "fast", "evaluate", "montecarlo", "kernels", "experiments", "cli"]
NO_JAX = {"base", "symbolic", "numeric"}

#: (importer, imported) pairs allowed to point up, each with the reason.
ALLOWED_UP = {
    # Activation.numeric("jax") is a convenience that hands the activation to the JAX printer;
    # the import is deferred to the call, so importing the base stage never loads JAX.
    ("symbnmf._activations", "symbnmf.fast._jaxprint"): "deferred dispatch of Activation.numeric('jax')",
}


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "symbnmf":
        return None
    if len(parts) == 1:
        return "package"
    head = parts[1]
    if head in (
        "_activations",
        "_chunking",
        "_conventions",
        "_errors",
        "_lazy",
        "_output",
        "_process",
        "_progress",
        "_secret",
    ):
        return "base"
    if head == "_evaluate":
        return "evaluate"
    if head == "__main__":
        return "cli"
    return head if head in ORDER else "unknown"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, int]]:
    """Every imported module name (absolute) with its line, also inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, node.lineno))
            # ``from symbnmf.fast import codegen`` imports the submodule symbnmf.fast.codegen
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if PKG.parent.joinpath(*sub.split(".")).with_suffix(".py").exists():
                    out.append((sub, node.lineno))
    return out


MODULES = sorted(p for p in PKG.rglob("*.py") if module_name(p) != "symbnmf")


def violations(path: Path) -> list[str]:
    me = module_name(path)
    mine = stage_of(me)
    bad = []
    for mod, line in imports(path):
        is_jax = mod == "jax" or mod.startswith(("jax.", "jaxlib"))
        if mine in NO_JAX and is_jax and (me, mod) not in ALLOWED_UP:
            bad.append(f"{path.name}:{line}: stage {mine} imports {mod} (JAX enters at fast)")
        theirs = stage_of(mod)
        if theirs in (None, "package"):
            continue
        assert theirs != "unknown", f"{me} imports {mod}, which belongs to no stage: add it to ORDER"
        if ORDER.index(theirs) > ORDER.index(mine) and (me, mod) not in ALLOWED_UP:
            bad.append(f"{me}:{line}: stage {mine} imports {mod} (stage {theirs}, later in the pipeline)")
    return bad


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_imports_point_down_the_pipeline(path):
    assert stage_of(module_name(path)) in ORDER, f"{path} is in no stage folder"
    assert violations(path) == []


def test_checker_catches_an_upward_import(tmp_path, monkeypatch):
    """The rule can fail: a symbolic module importing JAX or the CLI is reported."""
    fake = PKG / "symbolic" / "_probe_for_test.py"
    fake.write_text("def f():\n    import jax\n    from symbnmf.cli import main\n")
    try:
        bad = violations(fake)
    finally:
        fake.unlink()
    assert any("imports jax" in b for b in bad)
    assert any("symbnmf.cli" in b for b in bad)


def test_symbolic_and_numeric_load_without_jax():
    """Importing every symbolic and numeric module (and the package) does not load JAX."""
    mods = [module_name(p) for p in MODULES if stage_of(module_name(p)) in NO_JAX]
    code = "import sys\n" + "".join(f"import {m}\n" for m in mods) + "import symbnmf\nprint('jax' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_subpackages_state_their_stage():
    """Each stage folder's __init__ says what the stage does and what it may import."""
    for init in sorted(PKG.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, f"{init} does not state its import rule"
