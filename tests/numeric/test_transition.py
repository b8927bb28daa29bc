"""alpha-ReLU: forward eigenvalues against the certified closed forms, and alpha_c(B)."""

from __future__ import annotations

import mpmath
import pytest
from mpmath import mp

from symbnmf._errors import SymbnmfError
from symbnmf.numeric._transition import alpha_relu_point, critical_alpha, instability


def test_alpha_one_is_relu_and_alpha_two_matches_closed_form():
    from symbnmf.numeric._certify import certify

    r1 = alpha_relu_point(1, 8, 20)
    relu = certify("relu", 8, 20)
    mp.dps = 20
    for q in relu.quantities:
        if q.name in r1:
            assert abs(r1[q.name] - q.closed_form) < mpmath.mpf(10) ** -15
    # alpha = 2 is piecewise polynomial: it has closed forms, certified at 20 digits
    c2 = certify("alpha_relu(2)", 6, 20)
    assert c2.ok


def test_critical_alpha_B8():
    ac = critical_alpha(8, dps=10, tol=1e-6)
    assert 1.5 < ac < 1.75
    # sign change across alpha_c: attracting below, unstable above (forward.L crosses 1)
    assert instability(ac - mpmath.mpf("0.01"), 8, 10) < 0 < instability(ac + mpmath.mpf("0.01"), 8, 10)


def test_B4_stays_attracting_and_alpha_c_decreases_with_B():
    # at B = 4 forward.L stays below 1 (slowly rising with alpha); larger batches destabilise earlier
    assert instability(6, 4, 10) < 0
    assert instability("1.3", 16, 10) > 0 > instability("1.3", 8, 10)


def test_bad_alpha():
    with pytest.raises(SymbnmfError):
        alpha_relu_point(0, 8)
