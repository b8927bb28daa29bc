"""Code generation: standalone, exact JAX (or NumPy) evaluators of the derived closed forms.

``symbnmf.fast.codegen.jax_module(activation)`` returns the source of a Python module that depends
only on ``jax`` (or ``numpy``), with one function per quantity (``fixed_point_diag(B)``, ...,
``backward_G(B)``, ``depth_scale(B)``; the activation's free parameters, e.g. the leaky slope
``a``, are extra arguments). The closed forms come from :func:`symbnmf.derive` (Yang et al.,
ICLR 2019: Thm 3.1 fixed point, Thm 3.6/3.7 forward and Thm 3.9/3.10 backward eigenvalues;
conventions of docs/theory.md) and are printed by :mod:`symbnmf.fast._jaxprint` — nothing is typed in.

Activations without closed forms (tanh, gelu, ...) are refused with a :class:`NoClosedFormError`
naming the fast numeric path (:func:`symbnmf.fast_evaluate`, ``symbnmf eval --fast``).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

import sympy as sp

from symbnmf._errors import NoClosedFormError
from symbnmf.fast._codegen_module import function_name, ordered, render_module
from symbnmf.fast._jaxprint import CodegenError

__all__ = ["CodegenError", "closed_forms", "jax_functions", "jax_module", "load_module"]


def closed_forms(
    activation: Any, quantities: Sequence[str] | None = None
) -> tuple[dict[str, sp.Expr], tuple[sp.Symbol, ...], Any]:
    """``({quantity: closed form}, free parameter symbols, activation)`` from :func:`symbnmf.derive`."""
    from symbnmf._activations import get_activation

    act = get_activation(activation)
    qs = ordered(quantities)
    if not act.has_closed_form:
        raise NoClosedFormError(
            f"{act.label} has no closed form in symbnmf (only piecewise-polynomial activations with their "
            "kink at 0 do); use the fast numeric path instead: `symbnmf eval ... --fast` or "
            "symbnmf.fast_evaluate(activation, Bs, **params)"
        )
    from symbnmf.symbolic._derive import derive

    derivation = derive(act)
    bound = act.bindings
    forms: dict[str, sp.Expr] = {}
    for q in qs:
        expr = sp.sympify(derivation.quantities[q])
        forms[q] = expr.subs(bound) if bound else expr
    return forms, tuple(act.free_parameters), act


def jax_module(
    activation: Any, quantities: Sequence[str] | None = None, *, target: str = "jax", command: str = ""
) -> str:
    """Source of a standalone module evaluating the closed forms of ``activation``.

    * ``quantities``: names from :data:`symbnmf.QUANTITIES` (default: all).
    * ``target``: ``"jax"`` (imports only jax; jit/vmap/grad-able, dtype-preserving: float64
      with x64 on, float32 otherwise) or ``"numpy"``.

    Functions broadcast over arrays of B and of the activation's free parameters. Raises
    :class:`~symbnmf._errors.NoClosedFormError` for activations without closed forms.
    """
    from symbnmf import __version__
    from symbnmf.symbolic._algebra import B

    forms, params, act = closed_forms(activation, quantities)
    return render_module(
        forms,
        B,
        params,
        target=target,
        activation=act.label,
        version=__version__,
        command=command or f"symbnmf codegen {act.label!r} --target {target}",
    )


def load_module(source: str, name: str = "symbnmf_generated") -> types.ModuleType:
    """Execute generated ``source`` as an in-memory module (not added to ``sys.modules``)."""
    mod = types.ModuleType(name)
    mod.__file__ = f"<{name}>"
    exec(compile(source, f"<{name}>", "exec"), mod.__dict__)
    return mod


def jax_functions(
    activation: Any, quantities: Sequence[str] | None = None, *, target: str = "jax"
) -> dict[str, Callable[..., Any]]:
    """In-memory callables ``{quantity: f(B, *params)}`` of the generated module (see :func:`jax_module`)."""
    mod = load_module(jax_module(activation, quantities, target=target))
    return {q: getattr(mod, function_name(q)) for q in mod.FUNCTIONS}
