"""Text (non --json) output of eval / derive / simulate: 100 columns, with a legend (issue 10)."""

from __future__ import annotations

import pytest

from symbnmf.cli.main import main
from symbnmf.cli.util import COLUMNS, table, wrap_formula


def _run(capsys, *argv):
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def _assert_readable(out: str):
    assert max(len(ln) for ln in out.splitlines()) <= COLUMNS
    for word in ("legend", "fixed_point", "forward.X", "backward.X", "backward.G", "depth_scale", "G, L, M"):
        assert word in out, word


def test_eval_text_fits_and_has_legend(capsys):
    out = _run(capsys, "eval", "relu", "-B", "4", "8", "1000000", "--dps", "30")
    _assert_readable(out)
    assert "3.08406094809" in out  # backward.G at B = 4, 12 significant digits


def test_derive_text_fits_and_has_legend(capsys):
    out = _run(capsys, "derive", "relu")
    _assert_readable(out)
    assert "theta_B = acos(1/(B - 1))" in out


def test_table_splits_into_blocks_repeating_the_key():
    rows = [[str(b)] + [f"{b * 1.234567891234:.12g}"] * 9 for b in (4, 8)]
    lines = table(["B"] + [f"quantity_{i}" for i in range(9)], rows, width=60)
    assert max(map(len, lines)) <= 60
    assert sum(ln.lstrip().startswith("B ") for ln in lines) >= 2


@pytest.mark.parametrize("width", [40, 100])
def test_wrap_formula_prefers_top_level_breaks(width):
    text = "q = (a + b*(c - d) + e)/((f + g)*(h - i + j*(k + l)))" * 3
    lines = wrap_formula(text, width=width)
    assert max(map(len, lines)) <= width
    assert " ".join(ln.strip() for ln in lines).replace("  ", " ") == text


@pytest.mark.slow
def test_simulate_text_explains_finite_width_bias(capsys):
    out = _run(capsys, "simulate", "relu", "-B", "4", "--width", "16", "--depth", "3", "--networks", "4")
    assert "O(1/N)" in out and "extrapolate" in out
    assert max(len(ln) for ln in out.splitlines()) <= COLUMNS
