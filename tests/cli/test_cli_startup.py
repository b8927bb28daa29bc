"""Start-up cost of the command line (issue 14): ``symbnmf --help`` imports neither JAX nor SymPy
nor any subcommand module; ``symbnmf <cmd> --help`` imports only that command's module; the
static listing (NAME/HELP read from each module's source) agrees with the modules themselves."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from symbnmf.cli.main import COMMAND_MODULES, command_info

PROBE = """
import json, sys
from symbnmf.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "sympy", "mpmath", "symbnmf"))))
"""


def _imported(*argv: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_top_level_help_imports_no_jax_sympy_or_subcommand():
    mods = _imported("--help")
    assert not {m for m in mods if m.split(".")[0] in ("jax", "jaxlib", "sympy", "mpmath")}, mods
    assert not set(COMMAND_MODULES) & mods, mods


@pytest.mark.parametrize("command", ["derive", "simulate"])
def test_command_help_imports_only_that_command_and_no_jax(command):
    mods = _imported(command, "--help")
    assert f"symbnmf.cli.{command}" in mods
    assert not (set(COMMAND_MODULES) - {f"symbnmf.cli.{command}"}) & mods, mods
    assert "jax" not in mods


def test_static_listing_matches_the_modules():
    for modname in COMMAND_MODULES:
        mod = importlib.import_module(modname)
        assert command_info(modname) == (mod.NAME, mod.HELP), modname


def test_memory_budget_sizes():
    from symbnmf._errors import SymbnmfError
    from symbnmf.cli.simulate import parse_size

    assert parse_size(None) is None
    assert parse_size("512M") == 512 << 20 and parse_size("2G") == 2 << 30 and parse_size("1.5GiB") == 3 << 29
    assert parse_size("300000") == 300000 and parse_size("64kb") == 64 << 10
    for bad in ("", "-1G", "lots", "0", "1e30T"):
        with pytest.raises(SymbnmfError, match="memory-budget"):
            parse_size(bad)
