"""``symbnmf check --eps`` and ``symbnmf codegen --eps`` (issue 12, closed forms)."""

from __future__ import annotations

import json

from symbnmf.cli.main import main


def test_check_eps_json(capsys):
    rc = main(["check", "relu", "-B", "4", "--eps", "0.1", "--weight-var", "2", "--dps", "30", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["ok"] and doc["eps"] == 0.1 and doc["weight_var"] == 2.0
    assert doc["results"][0]["min_digits"] >= 25


def test_check_eps_refuses_outside_family(capsys):
    assert main(["check", "tanh", "-B", "4", "--eps", "0.1"]) == 2
    assert "closed form" in capsys.readouterr().err
    assert main(["check", "relu", "-B", "4", "--eps", "0.1", "--beta", "0.5"]) == 2
    assert main(["check", "relu", "-B", "4", "--weight-var", "2"]) == 2
    assert "--eps" in capsys.readouterr().err


def test_codegen_eps_writes_module(capsys, tmp_path):
    out = tmp_path / "m.py"
    rc = main(["codegen", "relu", "--eps", "0.01", "--target", "numpy", "-o", str(out), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert rc == 0 and info["eps"] == "0.01" and "fixed_point_mu" in info["functions"]
    ns: dict = {}
    exec(compile(out.read_text(), str(out), "exec"), ns)
    assert float(ns["evaluate"](8)["backward.G"]) > 1
