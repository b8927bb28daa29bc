"""CLI of the symbolic core: derive / eval JSON schemas, LaTeX output, error paths (exit 2)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys

import pytest

from symbnmf.cli.main import main

QUANT_KEYS = {"fixed_point": {"diag", "offdiag"}, "forward": {"G", "L", "M"}, "backward": {"G", "L", "M"}}


def run_cli(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_eval_json_schema(capsys):
    rc, out, err = run_cli(capsys, "eval", "relu", "--batch-size", "4", "64", "--json")
    assert rc == 0
    doc = json.loads(out)  # exactly one JSON object
    assert set(doc) >= {"activation", "conventions", "results"}
    assert doc["activation"] == "relu"
    assert [r["B"] for r in doc["results"]] == [4, 64]
    for r in doc["results"]:
        assert r["method"] == "closed-form"
        for head, keys in QUANT_KEYS.items():
            assert set(r[head]) == keys
            assert all(isinstance(v, float) and math.isfinite(v) for v in r[head].values())
        assert isinstance(r["depth_scale"], float)
        assert r["depth_scale"] == pytest.approx(1 / math.log(r["backward"]["G"]), rel=1e-14)
        assert "mp" not in r


def test_eval_dps_gives_mp_strings(capsys):
    rc, out, _ = run_cli(capsys, "eval", "identity", "-B", "8", "--dps", "40", "--json")
    r = json.loads(out)["results"][0]
    assert r["mp"]["dps"] == 40
    s = r["mp"]["backward"]["G"]
    assert isinstance(s, str) and s.startswith("1.2000000000000000000000000000000000000")
    assert r["mp"]["fixed_point"]["offdiag"].startswith("-0.14285714285714285714285714285714285")


def test_eval_leaky_param(capsys):
    rc, out, _ = run_cli(capsys, "eval", "leaky_relu", "--param", "a=0", "-B", "8", "--json")
    rc2, out2, _ = run_cli(capsys, "eval", "relu", "-B", "8", "--json")
    a, b = json.loads(out)["results"][0], json.loads(out2)["results"][0]
    assert a["backward"]["G"] == pytest.approx(b["backward"]["G"], rel=1e-15)


def test_derive_json_and_latex(capsys, tmp_path):
    tex = tmp_path / "relu.tex"
    rc, out, _ = run_cli(capsys, "derive", "relu", "--latex", str(tex), "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["latex_file"] == str(tex)
    assert set(doc["quantities"]) >= {"fixed_point.diag", "backward.G", "depth_scale"}
    assert "acos" in doc["quantities"]["backward.G"]["sympy"]
    assert (
        "\\operatorname{acos}" in doc["quantities"]["backward.G"]["latex"]
        or "acos" in doc["quantities"]["backward.G"]["latex"]
    )
    assert doc["limits"]["backward.G"]["B_to_infinity"] == "pi/(-1 + pi)"
    # refuses to overwrite, and the file is untouched
    before = tex.read_text()
    rc, out, err = run_cli(capsys, "derive", "relu", "--latex", str(tex))
    assert rc == 2 and "--force" in err and tex.read_text() == before
    rc, *_ = run_cli(capsys, "derive", "relu", "--latex", str(tex), "--force")
    assert rc == 0


def _check_latex_structure(text: str) -> None:
    assert text.startswith("\\documentclass")
    assert text.rstrip().endswith("\\end{document}")
    envs = re.findall(r"\\(begin|end)\{([a-z*]+)\}", text)
    stack = []
    for kind, env in envs:
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env
    assert not stack
    depth = 0
    for ch in re.sub(r"\\[{}]", "", text):
        depth += ch == "{"
        depth -= ch == "}"
        assert depth >= 0
    assert depth == 0
    assert text.count("\\[") == text.count("\\]")


@pytest.mark.parametrize("act", ["identity", "relu", "leaky_relu"])
def test_latex_document_parses(act):
    from symbnmf import derive

    text = derive(act).latex()
    _check_latex_structure(text)
    assert "\\item \\textbf{Result}" in text
    assert derive(act)._repr_latex_().startswith("$\\begin{aligned}")


@pytest.mark.skipif(
    shutil.which("pdflatex") is None, reason="pdflatex not installed (.ci/run installs texlive-latex-base)"
)
def test_latex_document_compiles(tmp_path):
    from symbnmf import derive

    (tmp_path / "relu.tex").write_text(derive("relu").latex())
    res = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "relu.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout[-3000:]
    assert (tmp_path / "relu.pdf").stat().st_size > 10_000


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["eval", "relu", "-B", "3"], "B >= 4"),
        (["eval", "relu", "-B", "2"], "B >= 4"),
        (["eval", "relu", "-B", "4.5"], "integer"),
        (["eval", "relu", "-B", "four"], "integer"),
        (["eval", "nosuch", "-B", "4"], "unknown activation"),
        (["eval", "tanh(g*x)", "-B", "4"], "unbound parameter"),
        (["eval", "tanh(y)", "-B", "4"], "does not depend on x"),
        (["eval", "tanh", "-B", "4", "--method", "closed-form"], "no closed form"),
        (["derive", "tanh"], "no closed form"),
        (["eval", "relu", "-B", "8", "--dps", "2"], "dps"),
        (["eval", "leaky_relu", "--param", "a", "-B", "4"], "NAME=VALUE"),
    ],
)
def test_errors_are_one_line_with_exit_2(capsys, argv, needle):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2
    lines = [l for l in err.strip().splitlines() if l]
    assert len(lines) == 1 and lines[0].startswith("symbnmf: error:")
    assert needle in lines[0]
    assert "Traceback" not in err


def test_error_with_json_prints_one_json_object(capsys):
    rc, out, err = run_cli(capsys, "eval", "relu", "-B", "3", "--json")
    assert rc == 2
    assert "B >= 4" in json.loads(out)["error"]


def test_console_script_and_module_entry_point():
    res = subprocess.run(
        [sys.executable, "-m", "symbnmf", "eval", "identity", "-B", "5", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["results"][0]["backward"]["G"] == pytest.approx(1.5)
