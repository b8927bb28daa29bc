"""Temporary minimal JAX lambdify (to be replaced by the table-driven JAX printer)."""
from __future__ import annotations

from typing import Any, Callable

import sympy as sp


def jax_callable(expr: sp.Expr, *symbols: sp.Symbol) -> Callable[..., Any]:
    import jax.numpy as jnp
    import jax.scipy.special as jss

    mods = [{"erf": jss.erf, "erfc": jss.erfc, "gamma": lambda z: jnp.exp(jss.gammaln(z))}, "jax"]
    return sp.lambdify(symbols, expr, modules=mods)
