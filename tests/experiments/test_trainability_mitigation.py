"""Mitigation sweeps (paper Fig 4, validation/mitigation.py): theory curves and a smoke run."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load():
    spec = importlib.util.spec_from_file_location(
        "symbnmf_validation_mitigation", os.path.join(ROOT, "validation", "mitigation.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tanh_gamma_curve_tends_to_the_linear_bound():
    """Thm 3.9: lambda_down_G >= (B-2)/(B-3), equality iff phi is linear; tanh(g x) is linear as g -> 0."""
    mit = _load()
    B = 16
    lin = (B - 2) / (B - 3)
    th = mit.theory_curve("tanh(g*x)", "g", np.array([0.02, 0.5, 1.0, 2.0]), B)
    lam = np.array(th["backward_G"], dtype=float)
    assert not th["failed"]
    assert np.all(lam >= lin * (1 - 1e-6))
    assert lam[0] == pytest.approx(lin, rel=1e-3)
    assert np.all(np.diff(lam) > 0)  # more non-linear, faster explosion
    np.testing.assert_allclose(th["depth_scale"], 1 / np.log(lam), rtol=1e-9)


def test_relu_beta_curve_decreases_towards_the_linear_bound():
    """relu(x + b) is linear on most of the sphere for large b: lambda_down_G decreases to (B-2)/(B-3)."""
    mit = _load()
    B = 16
    lin = (B - 2) / (B - 3)
    th = mit.theory_curve("relu(x + b)", "b", np.array([0.0, 1.0, 3.0]), B)
    lam = np.array(th["backward_G"], dtype=float)
    assert np.all(np.diff(lam) < 0)
    assert lam[-1] > lin and lam[-1] - lin < 0.3 * (lam[0] - lin)


@pytest.mark.slow
def test_mitigation_quick_run_writes_outputs(tmp_path):
    pytest.importorskip("sklearn")
    mit = _load()
    assert mit.main(["--quick", "--outdir", str(tmp_path), "--sweeps", "beta_relu"]) == 0
    png = tmp_path / "mitigation_beta_relu_quick.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads((tmp_path / "mitigation_quick.json").read_text())
    assert rep["sweeps"]["beta_relu"]["simulation"][0]["rate"] > 1
