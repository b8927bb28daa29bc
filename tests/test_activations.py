"""Activations: catalog, safe parsing, derivatives, piecewise-polynomial and homogeneity detection."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symbnmf
from symbnmf import ActivationError, get_activation, x


@pytest.mark.parametrize(
    "name, hp, degree",
    [
        ("identity", (x, 0), 1),
        ("linear", (x, 0), 1),
        ("relu", (0, x), 1),
        ("leaky_relu(0.1)", (x / 10, 9 * x / 10), 1),
        ("alpha_relu(2)", (0, x**2), 2),
        ("abs(x)", (-x, 2 * x), 1),
        ("relu(x)**2 + x", (x, x**2), None),
    ],
)
def test_half_polynomial_and_homogeneity(name, hp, degree):
    act = get_activation(name)
    assert act.half_polynomial is not None
    assert sp.expand(act.half_polynomial.p.as_expr() - hp[0]) == 0
    assert sp.expand(act.half_polynomial.q.as_expr() - hp[1]) == 0
    assert act.homogeneity == degree


@pytest.mark.parametrize(
    "name", ["tanh", "erf", "gelu", "swish", "relu(x - 0.2)", "alpha_relu(1.5)", "tanh(0.5*x + 0.2)"]
)
def test_no_closed_form_route(name):
    act = get_activation(name)
    assert act.half_polynomial is None
    assert not act.has_closed_form


def test_alpha_relu_fractional_is_homogeneous():
    assert get_activation("alpha_relu(1.5)").homogeneity == sp.Rational(3, 2)
    assert get_activation("tanh").homogeneity is None


@pytest.mark.parametrize(
    "name", ["tanh", "erf", "gelu", "swish", "relu", "leaky_relu(0.2)", "tanh(0.5*x + 0.2)", "sin(x)"]
)
def test_derivative_matches_finite_differences(name):
    act = get_activation(name)
    f = act.numeric("numpy")
    df = act.numeric("numpy", derivative=True)
    pts = np.array([-1.7, -0.3, 0.4, 1.1, 2.5])
    h = 1e-6
    fd = (f(pts + h) - f(pts - h)) / (2 * h)
    np.testing.assert_allclose(df(pts), fd, rtol=1e-6, atol=1e-8)


def test_parameters_and_binding():
    act = get_activation("tanh(g*x + b)")
    assert {p.name for p in act.parameters} == {"g", "b"}
    with pytest.raises(ActivationError, match="unbound parameter"):
        act.numeric("numpy")
    bound = act.bind(g=0.5, b=0.2)
    assert bound.numeric("numpy")(1.0) == pytest.approx(np.tanh(0.7))
    with pytest.raises(ActivationError, match="no parameter"):
        act.bind(q=1)
    assert get_activation("leaky_relu(a=0.25)").values["a"] == sp.Rational(1, 4)
    assert get_activation("leaky_relu", a=0.25).numeric("numpy")(-4.0) == pytest.approx(-1.0)


@pytest.mark.parametrize(
    "bad, match",
    [
        ("foo", "unknown activation"),
        ("__import__('os').system('true')", "unknown function|unsupported"),
        ("x.__class__", "unsupported syntax"),
        ("lambda x: x", "unsupported syntax"),
        ("tanh(", "cannot parse"),
        ("", "empty"),
        ("3", "does not depend on x"),
        ("exp", "unknown activation"),
        ("leaky_relu(0.1, 2)", "one parameter"),
        ("tanh(x, x)", "takes 1"),
    ],
)
def test_bad_activations_are_rejected_without_eval(bad, match):
    with pytest.raises(ActivationError, match=match):
        get_activation(bad)


def test_kinks():
    assert get_activation("relu").kinks == (0.0,)
    assert get_activation("relu(x - 0.2)").kinks == (0.2,)
    assert get_activation("tanh").kinks == ()


def test_jax_callable_jits():
    jax = pytest.importorskip("jax")
    f = get_activation("gelu").numeric("jax")
    val = jax.jit(f)(1.0)
    assert float(val) == pytest.approx(0.8413447460685429, rel=1e-6)


def test_public_surface():
    for name in ["get_activation", "derive", "evaluate", "definitions", "Derivation", "LEMMAS", "QUANTITIES", "B"]:
        assert hasattr(symbnmf, name)
