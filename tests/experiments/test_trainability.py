"""``symbnmf trainability``: tiny grid, theory overlay, PNG/JSON outputs (issue 6)."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

pytest.importorskip("sklearn")

import symbnmf
from symbnmf._errors import OutputExistsError
from symbnmf.cli import trainability as cli_cmd
from symbnmf.experiments import trainability as cmd


def _args(tmp_path, *extra):
    p = argparse.ArgumentParser()
    cli_cmd.add_arguments(p)
    return p.parse_args(
        [
            "--depths",
            "2,30",
            "--batch-sizes",
            "4,16",
            "--width",
            "32",
            "--steps",
            "80",
            "--output",
            str(tmp_path / "tr"),
            *extra,
        ]
    )


def _is_png(path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_predicted_depth_identity_matches_published_eigenvalue():
    """Identity: lambda_down_G = (B-2)/(B-3) (docs/theory.md), so 16 xi = 16/ln((B-2)/(B-3))."""
    Bs = [4, 8, 16]
    pred = cmd.predicted_max_depth("identity", Bs, method="fast")
    for B, p in zip(Bs, pred):
        assert p == pytest.approx(16 / math.log((B - 2) / (B - 3)), rel=1e-8)


def test_predicted_depth_outside_theory_is_none():
    assert cmd.predicted_max_depth("relu", [3])[0] is None


def test_predicted_depth_matches_eval():
    """16 xi(B) must be 16 * depth_scale = 16/ln backward.G of ``symbnmf.evaluate`` (the eval schema)."""
    evaluate = getattr(symbnmf, "evaluate", None)
    if evaluate is None:
        pytest.skip("symbnmf.evaluate not available yet")
    Bs = [4, 8, 32]
    recs = evaluate(symbnmf.get_activation("relu"), Bs, method="auto")
    pred = cmd.predicted_max_depth("relu", Bs, method="auto")
    for r, p in zip(recs, pred):
        assert p == pytest.approx(16 * float(r["depth_scale"]), rel=1e-12)
        assert p == pytest.approx(16 / math.log(float(r["backward"]["G"])), rel=1e-10)


def test_relu_prediction_is_in_the_papers_range():
    """Thm 3.10: lambda_down_G(relu) decreases to pi/(pi-1), so 16 xi increases towards 16/ln(pi/(pi-1))."""
    pred = cmd.predicted_max_depth("relu", [4, 16, 128], method="fast")
    assert pred[0] < pred[1] < pred[2] < 16 / math.log(math.pi / (math.pi - 1))


def test_cli_tiny_grid_writes_png_and_json(tmp_path, capsys):
    args = _args(tmp_path, "--json", "--memory-budget", "1G")
    assert cli_cmd.run(args) == 0
    out = capsys.readouterr().out
    summary = json.loads(out)  # exactly one JSON object on stdout
    assert "runs" not in summary
    # the memory plan of the cells (issue 14): one network per cell, no remat at these sizes
    mem = summary["memory"]
    assert mem["budget_bytes"] == 1 << 30 and mem["networks_per_chunk"] == 1 and mem["remat"] is False
    assert 0 < mem["estimated_peak_bytes"] < 1 << 30
    png, js = tmp_path / "tr.png", tmp_path / "tr.json"
    assert _is_png(png)
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    rep = json.loads(js.read_text())
    acc = np.asarray(rep["accuracy"])
    assert acc.shape == (2, 2)
    # depth 2 learns at both batch sizes, well above chance
    assert acc[:, 0].min() > 0.6
    comp = {c["B"]: c for c in rep["comparison"]}
    assert comp[16]["predicted_max_depth"] == pytest.approx(cmd.predicted_max_depth("relu", [16], "fast")[0], rel=1e-6)
    assert len(rep["runs"]) == 4

    # never overwrite without --force
    with pytest.raises(OutputExistsError, match="--force"):
        cli_cmd.run(_args(tmp_path, "--json"))


def test_cli_eps_uses_the_eps_theory(tmp_path, capsys):
    """BN with eps > 0: the 16 xi line comes from the eps > 0 theory (issue 12), same as `eval --eps`."""
    args = _args(tmp_path, "--eps", "0.1", "--depths", "2", "--batch-sizes", "8", "--steps", "10")
    assert cli_cmd.run(args) == 0
    rep = json.loads((tmp_path / "tr.json").read_text())
    (rec,) = symbnmf.evaluate("relu", [8], eps=0.1, weight_var=1.0)
    assert rec["phase"] == "bsb1"
    assert rep["comparison"][0]["predicted_max_depth"] == pytest.approx(16 * rec["depth_scale"], rel=1e-8)
    assert "wrote" in capsys.readouterr().out


def test_cli_eps_in_the_collapsed_phase_has_no_depth_scale(tmp_path, capsys):
    args = _args(tmp_path, "--eps", "2", "--depths", "2", "--batch-sizes", "8", "--steps", "10")
    assert cli_cmd.run(args) == 0
    rep = json.loads((tmp_path / "tr.json").read_text())
    assert rep["comparison"][0]["predicted_max_depth"] is None
    assert "collapsed" in rep["theory"]["reason"]
    capsys.readouterr()


def test_small_batch_reason_is_reported():
    recs, _, reason = cmd.theory_records("relu", [3])
    assert recs == [None] and "B >= 4" in reason


def test_grid_with_several_seeds_averages_the_networks_of_a_cell():
    """seeds > 1: networks trained together (train_networks), cell accuracy = their mean."""
    import numpy as np

    g = symbnmf.trainability_grid([2], [8], width=16, steps=10, seeds=3, theory_method="closed-form", progress=False)
    assert len(g["runs"]) == 3 and g["settings"]["seeds"] == 3
    accs = [r["test_accuracy"] for r in g["runs"]]
    assert g["accuracy"][0][0] == pytest.approx(np.mean(accs), abs=1e-4)
    assert g["accuracy_sd"][0][0] == pytest.approx(np.std(accs, ddof=1), abs=1e-4)
    assert len({r["seed"] for r in g["runs"]}) == 3
    assert g["memory"]["networks_per_chunk"] == 3 and g["memory"]["chunks"] == 1  # one call (issue 14)


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_grid_rejects_bad_seed_counts(bad):
    with pytest.raises(symbnmf.SymbnmfError, match="seeds must be a positive integer"):
        symbnmf.trainability_grid([2], [8], width=16, steps=2, seeds=bad, progress=False)
