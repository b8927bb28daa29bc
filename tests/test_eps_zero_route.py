"""``evaluate(..., eps=0, weight_var=, gamma=, beta=)`` (issue 12): BN without eps is scale invariant,
so the eps theory at eps = 0 is the eps = 0 theory of phi(gamma x + beta) with the pre-activation
entries scaled by sigma_w^2. symbnmf answers it that way (seconds) instead of tabulating the eps
integrals over tau (minutes; for ReLU with beta != 0 tens of minutes). Checked here against the eps
machinery itself: the JAX eps path at eps = 0 (float64, ~1e-10), and (slow) the mpmath eps path."""

from __future__ import annotations

import json
import math

import pytest

from symbnmf import evaluate
from symbnmf._activations import get_activation
from symbnmf._conventions import CONVENTIONS, EPS_CONVENTIONS, QUANTITIES
from symbnmf._evaluate import _eps_fast_backend, evaluation_document

CASES = [("relu", 1.0, 1.5, 0.1), ("tanh", 2.0, 0.8, 0.3), ("gelu", 0.5, 1.2, -0.3)]


def _get(rec: dict, name: str):
    head, _, tail = name.partition(".")
    return rec[head][tail] if tail else rec[head]


@pytest.mark.parametrize("B", [4, 32])
@pytest.mark.parametrize(("act", "sw", "g", "b"), CASES)
def test_eps_zero_equals_the_eps_path_at_eps_zero(act, sw, g, b, B):
    (rec,) = evaluate(act, [B], weight_var=sw, gamma=g, beta=b)
    ref = _eps_fast_backend(get_activation(act), B, eps=0, weight_var=sw, gamma=g, beta=b)
    meta = ref.pop("_meta")
    for q in QUANTITIES:
        want, got = ref[q], _get(rec, q)
        if want is None:
            assert got is None, q
        else:
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12), q
    assert rec["phase"] == meta["phase"] == "bsb1" and rec["eps"] == 0.0
    assert rec["mu"] == pytest.approx(meta["mu"], rel=1e-9)
    assert rec["weight_var"] == sw and rec["gamma"] == g and rec["beta"] == b
    if meta["collapse_boundary_eps"] is None:
        assert rec["collapse_boundary_eps"] is None
    else:
        assert rec["collapse_boundary_eps"] == pytest.approx(meta["collapse_boundary_eps"], rel=1e-8, abs=1e-12)


def test_eps_zero_scales_the_fixed_point_with_the_weight_variance_exactly():
    """diag/offdiag are pre-activation entries: sigma_w^2 times those of phi(gamma x + beta); the
    eigenvalues do not depend on sigma_w^2; --dps strings are scaled at their precision."""
    (one,) = evaluate("tanh", [8], gamma=0.8, beta=0.3, dps=30)
    (two,) = evaluate("tanh", [8], weight_var=2.5, gamma=0.8, beta=0.3, dps=30)
    (plain,) = evaluate("tanh(0.8*x + 0.3)", [8], dps=30)
    for k in ("diag", "offdiag"):
        assert one["fixed_point"][k] == plain["fixed_point"][k]
        assert two["fixed_point"][k] == pytest.approx(2.5 * plain["fixed_point"][k], rel=1e-15)
        a, p = two["mp"]["fixed_point"][k], plain["mp"]["fixed_point"][k]
        import mpmath

        with mpmath.workdps(40):
            assert abs(mpmath.mpf(a) - mpmath.mpf("2.5") * mpmath.mpf(p)) <= mpmath.mpf(10) ** -28 * abs(mpmath.mpf(a))
    assert two["backward"] == one["backward"] == plain["backward"]
    assert two["mu"] == pytest.approx(2.5 * one["mu"], rel=1e-15)


def test_eval_document_states_the_eps_conventions():
    """``eval --json`` with any eps flag states the eps conventions (each record carries its eps,
    weight_var, gamma, beta); without one the eps = 0 text is unchanged."""
    recs = evaluate("relu", [8], eps=0.1, weight_var=2)
    doc = evaluation_document("relu", recs)
    assert doc["conventions"] == EPS_CONVENTIONS and "eps" in EPS_CONVENTIONS and "sigma_w^2" in EPS_CONVENTIONS
    assert recs[0]["eps"] == 0.1 and recs[0]["weight_var"] == 2.0
    plain = evaluation_document("relu", evaluate("relu", [8]))
    assert plain["conventions"] == CONVENTIONS
    json.dumps(doc)  # JSON-ready


def test_eps_zero_with_a_degenerate_composite_is_refused():
    """relu(gamma x + beta) with beta far below the sphere is 0 on every sample: a clear error."""
    from symbnmf._errors import SymbnmfError

    with pytest.raises(SymbnmfError):
        evaluate("relu", [4], gamma=1.0, beta=-50.0)


@pytest.mark.slow
def test_eps_zero_equals_the_mpmath_eps_path():
    """Against :func:`symbnmf.evaluate_eps` (mpmath, tau tables) at eps = 0, to its 1e-10."""
    from symbnmf.numeric._epsilon import evaluate_eps

    (rec,) = evaluate("tanh", [4], weight_var=2.0, gamma=0.8, beta=0.3)
    ref = evaluate_eps("tanh", 4, eps=0, weight_var=2.0, gamma=0.8, beta=0.3)
    for q in QUANTITIES:
        want = ref[q]
        assert (want is None) == (_get(rec, q) is None), q
        if want is not None:
            assert math.isclose(_get(rec, q), float(want), rel_tol=1e-10, abs_tol=1e-13), q
