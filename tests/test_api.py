"""The public API: docs/api.md, symbnmf.__all__ and the stage subpackages agree (issue 9)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import symbnmf

API_MD = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def documented_names() -> set[str]:
    names = set()
    for line in API_MD.read_text().splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names |= {m.split("(")[0] for m in re.findall(r"`([^`]+)`", first_cell)}
    return names


def test_api_page_lists_exactly_the_public_names():
    public = set(symbnmf.__all__) - {"__version__"}
    documented = documented_names()
    assert public - documented == set(), "public but undocumented"
    assert documented - public == set(), "documented but not public"


def test_every_public_name_resolves():
    for name in symbnmf.__all__:
        assert getattr(symbnmf, name) is not None, name


def test_version_comes_from_package_metadata():
    from importlib.metadata import version

    assert symbnmf.__version__ == version("symbnmf")


def test_stage_packages_re_export_their_public_names():
    """A name public at the top comes from the stage that owns it (same object)."""
    for name, (module, _attr) in symbnmf._PUBLIC.items():
        parts = module.split(".")
        if len(parts) >= 3 and parts[1] in ("symbolic", "numeric", "fast", "montecarlo", "experiments"):
            stage = importlib.import_module(".".join(parts[:2]))
            for public in getattr(stage, "__all__", ()):  # names a stage resolves lazily (PEP 562)
                getattr(stage, public)
            value = getattr(symbnmf, name)
            exported = [v for v in vars(stage).values() if v is value]
            assert exported, f"{name} is not re-exported by {stage.__name__}"


def test_import_symbnmf_is_lazy():
    code = "import sys, symbnmf; print(sorted(m for m in ('sympy', 'jax', 'mpmath') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
