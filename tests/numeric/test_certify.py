"""Certification (closed form vs independent quadrature), the quadrature eval path, the check CLI."""

from __future__ import annotations

import json

import explicit as ex
import mpmath
import numpy as np
import pytest
import sympy as sp
from mpmath import mp

from symbnmf._errors import ActivationError, NoClosedFormError
from symbnmf.cli.main import main
from symbnmf.numeric._certify import certify, closed_forms
from symbnmf.numeric._quadrature import evaluate_quadrature


@pytest.mark.parametrize("act", ["identity", "relu", "leaky_relu(0.2)"])
@pytest.mark.parametrize("B", [4, 9])
def test_closed_forms_certified_at_30_digits(act, B):
    c = certify(act, B, 30)
    assert c.ok, c.as_json()
    assert c.min_digits >= 25
    assert {q.name for q in c.quantities} >= {"fixed_point.diag", "backward.G", "forward.M", "depth_scale"}


def test_fifty_digits_relu():
    c = certify("relu", 5, 50)
    assert c.ok and c.min_digits >= 45


def test_certify_can_fail():
    # a closed form off by 1e-40 must be caught at 50 digits (and pass at 30: below its tolerance)
    forms = dict(closed_forms("relu"))
    forms["backward.G"] = forms["backward.G"] + sp.Rational(1, 10**40)
    bad = certify("relu", 4, 50, forms=forms)
    assert not bad.ok
    assert [q.name for q in bad.quantities if not q.agrees] == ["backward.G"]
    assert 38 <= next(q.digits for q in bad.quantities if q.name == "backward.G") <= 41
    assert certify("relu", 4, 30, forms=forms).ok


def _tanh(y):
    return np.tanh(y)


def _dtanh(y):
    return 1 / np.cosh(y) ** 2


@pytest.mark.parametrize("B", [4, 8])
def test_tanh_quadrature_against_explicit_monte_carlo(B):
    q = {k: float(v) for k, v in evaluate_quadrature("tanh", B, 15).items()}
    n, seed = 100_000, 77 + B
    fp = ex.fixed_point(_tanh, B, n=n, seed=seed)
    for k in ("diag", "offdiag"):
        assert abs(fp[k].value - q[f"fixed_point.{k}"]) < 5 * fp[k].stderr
    dirs = ex.test_directions(B)
    for piece in ("L", "M"):
        e = ex.forward_rayleigh(_tanh, B, dirs[piece], n=n, seed=seed)
        assert abs(e.value - q[f"forward.{piece}"]) < 5 * e.stderr + 1e-6, (piece, e)
    for piece in ("G", "L", "M"):
        e = ex.backward_rayleigh(_tanh, _dtanh, B, dirs[piece], n=n, seed=seed)
        assert abs(e.value - q[f"backward.{piece}"]) < 5 * e.stderr, (piece, e)


def test_eval_cli_quadrature_json(capsys):
    rc = main(
        ["eval", "tanh(g*x + b)", "--param", "g=0.5", "--param", "b=0.2", "--batch-size", "5", "--json", "--dps", "25"]
    )
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    rec = doc["results"][0]
    assert rec["method"] == "quadrature"
    assert rec["tolerance"]["double_relative"] <= 1e-12
    ref = evaluate_quadrature("tanh(0.5*x + 0.2)", 5, 30)
    mp.dps = 30
    for name, v in ref.items():
        head, _, tail = name.partition(".")
        got = rec[head][tail] if tail else rec[head]
        assert abs(got - float(v)) <= 1e-12 * abs(float(v)) + 1e-300
        s = rec["mp"][head][tail] if tail else rec["mp"][head]
        assert abs(mpmath.mpf(s) - v) <= mpmath.mpf(10) ** -20 * max(1, abs(v))


def test_check_cli(capsys):
    rc = main(["check", "relu", "identity", "--batch-size", "4", "16", "--dps", "20", "--json", "--jobs", "1"])
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert rc == 0 and doc["ok"] and doc["min_digits"] >= 15
    assert len(doc["results"]) == 4
    rc = main(["check", "tanh", "--json"])
    assert rc == 2
    assert "no closed form" in json.loads(capsys.readouterr().out)["error"]


def test_bad_inputs():
    with pytest.raises(ActivationError, match="unbound parameter"):
        evaluate_quadrature("tanh(g*x)", 4, 15)
    with pytest.raises(NoClosedFormError):
        certify("tanh", 4, 20)
    from symbnmf._errors import BatchSizeError

    with pytest.raises(BatchSizeError):
        evaluate_quadrature("relu", 3, 15)
