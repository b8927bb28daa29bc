"""eps > 0 closed forms (derive_eps) against the independent mpmath path (numeric/_epsilon.py) at
50 digits, both phases, several B, eps, sigma_w^2, gamma; and the evaluate() routing."""

from __future__ import annotations

import pytest

from symbnmf import evaluate
from symbnmf._activations import get_activation
from symbnmf._errors import NoClosedFormError, SymbnmfError
from symbnmf.numeric._epsforms import certify_eps, closed_form_eps

CASES = [
    # (activation, params, B, eps, sigma_w^2, gamma, phase)
    ("relu", {}, 4, "0.1", "1", "1", "bsb1"),
    ("relu", {}, 8, "3", "1", "1", "collapsed"),
    ("identity", {}, 64, "0.25", "0.5", "1", "bsb1"),
]
SLOW_CASES = [
    ("leaky_relu", {"a": "0.2"}, 8, "0.01", "2", "1.5", "bsb1"),
    ("relu", {}, 64, "1e-6", "1", "1", "bsb1"),
    ("relu", {}, 64, "0.3", "1", "1", "bsb1"),  # eps_c = 0.3394...
    ("relu", {}, 4, "0.3", "1", "1", "bsb1"),  # eps_c = 0.3114...
    ("relu", {}, 64, "0.35", "1", "1", "collapsed"),
    ("leaky_relu", {"a": "-0.5"}, 4, "2", "3", "0.7", "collapsed"),
    ("identity", {}, 8, "5", "2", "1", "collapsed"),
    ("identity", {}, 128, "0.01", "1", "2", "bsb1"),
]


def _check(act, params, B, eps, sw, g, phase):
    a = get_activation(act, **params)
    cert = certify_eps(a, B, 50, eps=eps, weight_var=sw, gamma=g)
    assert phase in cert.activation
    assert cert.ok, cert.as_json()
    assert cert.min_digits >= 45
    names = {q.name for q in cert.quantities}
    assert {"backward.G", "backward.L", "backward.M", "forward.L", "forward.M", "collapse_slope"} <= names


@pytest.mark.parametrize("case", CASES)
def test_certify_eps_50_digits(case):
    _check(*case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES)
def test_certify_eps_50_digits_sweep(case):
    _check(*case)


def test_evaluate_routes_eps_to_closed_form():
    rec = evaluate("relu", [8], eps=0.1, weight_var=2)[0]
    assert rec["method"] == "closed-form" and rec["phase"] == "bsb1"
    quad = evaluate("relu", [8], eps=0.1, weight_var=2, method="quadrature")[0]
    assert quad["method"] == "quadrature"
    for head in ("forward", "backward"):
        for X in "GLM":
            assert rec[head][X] == pytest.approx(quad[head][X], rel=1e-12)
    assert rec["mu"] == pytest.approx(quad["mu"], rel=1e-12)
    col = evaluate("relu", [8], eps=3)[0]
    assert col["method"] == "closed-form" and col["phase"] == "collapsed" and col["fixed_point"]["diag"] == 0.0


def test_evaluate_eps_fallbacks_and_errors(monkeypatch):
    import symbnmf.numeric._epsilon as epsmod

    def fake(act, B, **kw):
        raise RuntimeError("mpmath path")

    monkeypatch.setattr(epsmod, "evaluate_eps", fake)
    for kw in ({"eps": 0.1, "beta": 0.5}, {"eps": 0.1, "gamma": -1.0}, {"eps": 0.1, "method": "quadrature"}):
        with pytest.raises(RuntimeError, match="mpmath path"):
            evaluate("relu", [4], **kw)
    with pytest.raises(RuntimeError, match="mpmath path"):
        evaluate("tanh", [4], eps=0.1)
    with pytest.raises(NoClosedFormError, match="quadrature"):
        evaluate("relu", [4], eps=0.1, beta=0.5, method="closed-form")
    with pytest.raises(NoClosedFormError):
        closed_form_eps("relu", 4, eps=0)
    monkeypatch.undo()
    with pytest.raises(SymbnmfError, match="eps"):
        evaluate("relu", [4], eps=-1.0)
    with pytest.raises(SymbnmfError, match="finite"):
        evaluate("relu", [4], eps=float("nan"))
