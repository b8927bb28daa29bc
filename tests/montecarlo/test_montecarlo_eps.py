"""`symbnmf simulate --eps` against the eps > 0 theory (issue 12): the theory column comes from the
front door (fast JAX path), and seeded finite-width simulations agree with it after the 1/N
extrapolation, in the BSB1 phase and in the collapsed phase."""

from __future__ import annotations

import pytest

from symbnmf import evaluate, simulate
from symbnmf._activations import get_activation
from symbnmf.montecarlo.networks import theory_values
from symbnmf.montecarlo.stats import extrapolate_width

Z_MAX = 4.0


def test_theory_values_eps_is_the_eps_theory():
    rec, reason = theory_values(get_activation("relu"), 8, eps=0.1)
    assert reason is None and rec["phase"] == "bsb1" and rec["method"] == "fast"
    ref = evaluate("relu", [8], method="quadrature", eps=0.1, weight_var=1)[0]
    for head, tail in (("fixed_point", "diag"), ("fixed_point", "offdiag"), ("backward", "G"), ("forward", "L")):
        assert rec[head][tail] == pytest.approx(ref[head][tail], rel=1e-9)
    col, _ = theory_values(get_activation("relu"), 8, eps=2.0)
    assert col["phase"] == "collapsed" and col["fixed_point"]["diag"] == 0


def _extrapolated(runs, key):
    ents = [key(r) for r in runs]
    return extrapolate_width([r["width"] for r in runs], [e["measured"] for e in ents], [e["stderr"] for e in ents])


@pytest.mark.slow
def test_relu_eps_bsb1_phase_matches_theory():
    ns = (128, 512)
    runs = [simulate("relu", 8, n, 12, 200, seed=7, eps=0.1, burn_in=10).summary for n in ns]
    assert runs[0]["fixed_point"]["diag"]["theory"] is not None
    for key in (
        lambda r: r["fixed_point"]["diag"],
        lambda r: r["fixed_point"]["offdiag"],
        lambda r: r["gradient_rate"],
    ):
        v, se = _extrapolated(runs, key)
        theory = key(runs[-1])["theory"]
        assert abs(v - theory) < Z_MAX * se, (v, se, theory)


@pytest.mark.slow
def test_relu_eps_collapsed_phase_gradient_rate():
    # eps = 2 > eps_c ~ 0.35 at B = 8: mu* = 0, gradients grow at the mu -> 0+ limit of backward.G
    ns = (128, 512)
    runs = [simulate("relu", 8, n, 12, 200, seed=8, eps=2.0, burn_in=10).summary for n in ns]
    v, se = _extrapolated(runs, lambda r: r["gradient_rate"])
    theory = runs[-1]["gradient_rate"]["theory"]
    assert theory is not None
    assert abs(v - theory) < Z_MAX * se, (v, se, theory)
