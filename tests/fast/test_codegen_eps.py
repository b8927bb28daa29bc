"""Generated eps > 0 modules (``symbnmf codegen ACT --eps``) against the mpmath closed forms."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from symbnmf._conventions import QUANTITIES
from symbnmf.fast._codegen_eps import eps_module
from symbnmf.fast.codegen import load_module
from symbnmf.numeric._epsforms import closed_form_eps

POINTS = [(4, 0.01, 2.0, 1.3), (8, 0.1, 1.0, 1.0), (64, 0.3, 1.0, 1.0), (8, 3.0, 1.0, 1.0)]


@pytest.mark.parametrize(
    "target,points",
    [
        ("numpy", POINTS),
        ("jax", POINTS[1:2] + POINTS[3:]),
        pytest.param("jax", POINTS, marks=pytest.mark.slow),
    ],
)
def test_generated_module_matches_mpmath(target, points):
    mod = load_module(eps_module("relu", eps=0.01, weight_var=2, target=target))
    with jax.enable_x64(True):
        evaluate = jax.jit(mod.evaluate) if target == "jax" else mod.evaluate  # one compilation for all points
        for B, e, s, g in points:
            got = evaluate(float(B), e, s, g)
            ref = closed_form_eps("relu", B, eps=str(e), weight_var=str(s), gamma=str(g))
            assert bool(got["bsb1"]) == (ref["_meta"]["phase"] == "bsb1")
            assert float(got["mu"]) == pytest.approx(ref["_meta"]["mu"], rel=1e-13, abs=0)
            for q in QUANTITIES:
                if ref[q] is None:
                    assert np.isnan(float(got[q]))
                else:
                    assert float(got[q]) == pytest.approx(float(ref[q]), rel=1e-12, abs=1e-300), (B, e, q)
            assert float(mod.collapse_boundary(B, e, s, g)) == pytest.approx(ref["_meta"]["collapse_boundary_eps"])
        if target == "jax":
            return
        # defaults from the command line, and broadcasting over arrays of B and eps
        out = mod.evaluate(np.array([4, 8, 16]))
        assert np.shape(out["backward.G"]) == (3,)
        mu = mod.fixed_point_mu(np.array([8.0, 8.0]), np.array([0.01, 10.0]))
        assert float(mu[0]) > 0 and float(mu[1]) == 0.0


@pytest.mark.slow
def test_generated_module_parameters_and_source():
    src = eps_module("leaky_relu", target="numpy")
    mod = load_module(src)
    assert "_expint_scaled" in src and "def fixed_point_mu(B, epsilon, sigma_w2=1.0, gamma=1.0, *, a)" in src
    got = mod.evaluate(8, 0.05, a=0.2)
    from symbnmf._activations import get_activation

    ref = closed_form_eps(get_activation("leaky_relu", a="0.2"), 8, eps="0.05")
    assert float(got["backward.G"]) == pytest.approx(float(ref["backward.G"]), rel=1e-12)
