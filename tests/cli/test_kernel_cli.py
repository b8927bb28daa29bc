"""``symbnmf kernel`` (issue 11): JSON output, saved arrays, refusals."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from symbnmf.cli.main import main
from symbnmf.kernels.stax import bn_network


@pytest.fixture
def inputs(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.random.default_rng(0).standard_normal((6, 4)))
    return p


def test_json_and_saved_array_match_the_library(inputs, tmp_path, capsys):
    out = tmp_path / "k.npy"
    assert (
        main(["kernel", "relu", "--inputs", str(inputs), "--depth", "2", "--eps", "0.01", "-o", str(out), "--json"])
        == 0
    )
    rec = json.loads(capsys.readouterr().out)
    assert rec["B"] == 6 and rec["get"] == ["nngp", "ntk"]
    saved = np.load(out)
    with jax.enable_x64(True):
        k = bn_network("relu", 2, eps=0.01)[2](np.load(inputs))
    assert np.allclose(saved[0], k.nngp, rtol=1e-13) and np.allclose(saved[1], k.ntk, rtol=1e-13)
    assert np.allclose(rec["ntk"], saved[1], rtol=1e-13)
    # refuses to overwrite without --force, then overwrites with it
    assert main(["kernel", "relu", "--inputs", str(inputs), "--depth", "1", "-o", str(out)]) == 2
    assert main(["kernel", "relu", "--inputs", str(inputs), "--depth", "1", "-o", str(out), "--force", "--json"]) == 0


@pytest.mark.parametrize(
    ("extra", "match"),
    [(["--get", "foo"], "--get"), (["--depth", "-1"], "--depth"), (["--eps", "-1"], "eps")],
)
def test_bad_arguments(inputs, capsys, extra, match):
    assert main(["kernel", "relu", "--inputs", str(inputs), *extra]) == 2
    assert match in capsys.readouterr().err


def test_bad_inputs_file(tmp_path, capsys):
    small = tmp_path / "small.npy"
    np.save(small, np.ones((3, 2)))
    assert main(["kernel", "relu", "--inputs", str(small)]) == 2
    assert "B >= 4" in capsys.readouterr().err
    assert main(["kernel", "relu", "--inputs", str(tmp_path / "none.npy")]) == 2
