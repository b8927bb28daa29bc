"""The printer's helper table (fast/_specfun.py): P_nu(z) = e^z E_nu(z) in JAX and NumPy, float64,
against mpmath over the orders and arguments the eps > 0 closed forms use."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import sympy as sp

from symbnmf.fast._jaxprint import jax_callable, jax_code, numpy_callable
from symbnmf.fast._specfun import HELPERS
from symbnmf.symbolic._epsforms import expint_scaled

NUS = np.array([1, 1.5, 2, 2.5, 3.5, 10, 31.5, 32, 63.5, 65, 129.5, 130])
ZS = np.array([1e-12, 1e-6, 1e-3, 0.1, 0.5, 1, 1.99, 2, 2.01, 5, 30, 100, 1e3, 1e6])


def _reference(nus, zs):
    with mpmath.workdps(90):  # mpmath's own expint loses ~10 digits at nu = 130, z = 100 at 40 digits
        return np.array([[float(mpmath.exp(z) * mpmath.expint(n, z)) for n in nus] for z in zs])


@pytest.mark.parametrize("name", sorted(HELPERS))
def test_helper_table_entry(name):
    """Every helper entry prints as a call of the embedded helper and is exact to a few ulp (float64)."""
    assert name == "expint_scaled"
    u, v = sp.symbols("u v", positive=True)
    expr = expint_scaled(u, v)
    assert jax_code(expr) == "_expint_scaled(u, v)"
    N, Z = np.meshgrid(NUS, ZS)
    want = _reference(NUS, ZS)
    got_np = numpy_callable(expr, u, v)(N, Z)
    with jax.enable_x64(True):
        got_jax = np.asarray(jax.jit(jax_callable(expr, u, v))(jnp.asarray(N), jnp.asarray(Z)))
    assert np.max(np.abs(got_np / want - 1)) < 2e-15
    assert np.max(np.abs(got_jax / want - 1)) < 1e-14


def test_helper_float32_and_grad():
    u, v = sp.symbols("u v", positive=True)
    f = jax_callable(expint_scaled(u, v), u, v)
    out = f(jnp.float32(3.5), jnp.float32(0.7))
    assert out.dtype == jnp.float32
    assert float(out) == pytest.approx(float(sp.N(expint_scaled(3.5, 0.7))), rel=1e-5)
    with jax.enable_x64(True):  # dP/dz = P_nu - P_{nu-1}
        g = jax.grad(lambda z: f(jnp.float64(3.5), z))(jnp.float64(0.7))
        want = sp.N(expint_scaled(3.5, 0.7) - expint_scaled(2.5, 0.7), 20)
        assert float(g) == pytest.approx(float(want), rel=1e-12)
