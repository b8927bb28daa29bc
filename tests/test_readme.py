"""The README's "symbnmf's own output" excerpts are exactly what the commands print (issue 10).

Each fenced block preceded by ``<!-- output of: symbnmf ARGS -->`` is compared, byte for byte,
with the stdout of ``python -m symbnmf ARGS`` (cold derivation: ``SYMBNMF_NO_CACHE=1``).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"<!-- output of: (symbnmf [^>]*?) -->\n```[a-z]*\n(.*?)```", re.S)


def excerpts() -> list[tuple[str, str]]:
    return MARK.findall((ROOT / "README.md").read_text())


def test_readme_has_excerpts():
    cmds = [c for c, _ in excerpts()]
    assert any(c.startswith("symbnmf derive") for c in cmds)
    assert any(c.startswith("symbnmf eval") for c in cmds)


@pytest.mark.parametrize("command,expected", excerpts(), ids=[c for c, _ in excerpts()])
def test_readme_excerpt_is_real_output(command, expected):
    env = dict(os.environ, SYMBNMF_NO_CACHE="1", COLUMNS="100")
    argv = [sys.executable, "-m", "symbnmf", *shlex.split(command)[1:]]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected, f"README excerpt of `{command}` differs from its output; paste the new output"


def test_readme_links_own_theory_doc():
    text = (ROOT / "README.md").read_text()
    assert "shared/" not in text
    assert (ROOT / "docs" / "theory.md").exists() and "docs/theory.md" in text
