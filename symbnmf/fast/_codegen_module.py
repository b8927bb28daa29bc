"""Writer of standalone evaluator modules (the source text; no JAX import here).

:func:`render_module` turns closed forms ``{quantity: SymPy expression in B and parameters}``
into the source of a Python module that depends only on ``jax`` (or ``numpy``): one function
per quantity, vectorised (broadcasting) over B and the parameters, jit/vmap/grad-able,
dtype-preserving, with a module docstring stating the conventions, the symbnmf version and
each function's LaTeX formula.
"""

from __future__ import annotations

import keyword
import textwrap
from collections.abc import Mapping, Sequence

import sympy as sp

from symbnmf._conventions import CONVENTIONS, QUANTITIES
from symbnmf.fast._jaxprint import TARGETS, CodegenError, print_assignments
from symbnmf.fast._stable import SWITCH_B, large_B_form, stable_in_B

#: What each quantity is (docstrings of the generated functions).
DESCRIPTIONS: dict[str, str] = {
    "fixed_point.diag": "Sigma*_ii = E phi(y1)^2, diagonal of the BSB1 fixed point (Thm F.5, Thm 3.2)",
    "fixed_point.offdiag": "Sigma*_ij = E phi(y1) phi(y2), off-diagonal of the BSB1 fixed point (Thm F.5, Thm 3.2)",
    "forward.G": "forward eigenvalue on the scale direction G (0: BN removes scale; Thm 3.6)",
    "forward.L": "forward eigenvalue lambda_L-up on L = {G D G : D diagonal, tr D = 0} (Thm 3.6, 3.7)",
    "forward.M": "forward eigenvalue lambda_M-up on M = {GSG = S, diag S = 0} (Thm 3.6, 3.7)",
    "backward.G": "backward eigenvalue lambda_G-down: per-layer growth of the squared gradient norm (Thm 3.9, 3.10)",
    "backward.L": "backward eigenvalue lambda_L-down of the gradient map on L (Thm 3.6 pieces)",
    "backward.M": "backward eigenvalue lambda_M-down of the gradient map on M (Thm 3.6 pieces)",
    "depth_scale": "depth scale xi = 1/ln(lambda_G-down) (Sec. 3.3; depth > ~16 xi is untrainable)",
}

_RESERVED = {"B", "jax", "jnp", "jsp", "np", "_sps", "_prepare", "_finish", "math", "_uB", "_uC", "_B0", "_big"}


def function_name(quantity: str) -> str:
    """``"backward.G"`` -> ``"backward_G"``."""
    return quantity.replace(".", "_")


def _check_names(params: Sequence[sp.Symbol]) -> list[str]:
    names = []
    for p in params:
        n = p.name
        if not n.isidentifier() or keyword.iskeyword(n) or n in _RESERVED or n.startswith("_t"):
            raise CodegenError(f"activation parameter name {n!r} clashes with the generated code; rename it (e.g. 'c')")
        names.append(n)
    return names


_PRELUDE = {
    "jax": '''
def _prepare(B, *params):
    """Broadcast the inputs to one float dtype (ints -> default float) and check B >= 4."""
    args = [jnp.asarray(v) for v in (B,) + params]
    dtype = jnp.result_type(*args, 1.0)
    args = jnp.broadcast_arrays(*[v.astype(dtype) for v in args])
    try:  # eager calls check B; traced ones (jit, vmap, grad) cannot and give NaN instead
        bad = bool(jnp.any(args[0] < 4))
    except jax.errors.ConcretizationTypeError:
        bad = False
    if bad:
        raise ValueError("batch size B must be >= 4 for the mean field formulas (App. J); use B >= 4")
    return args


def _finish(value, B):
    value = jnp.where(B >= 4, value, jnp.nan)  # only reachable when traced (eager calls raise)
    return jnp.broadcast_to(jnp.asarray(value, dtype=B.dtype), B.shape)
''',
    "numpy": '''
def _prepare(B, *params):
    """Broadcast the inputs to one float dtype (ints -> float64) and check B >= 4."""
    args = [np.asarray(v) for v in (B,) + params]
    floats = [a.dtype for a in args if np.issubdtype(a.dtype, np.inexact)]
    dtype = np.result_type(*floats) if floats else np.float64
    args = np.broadcast_arrays(*[a.astype(dtype) for a in args])
    if np.any(args[0] < 4):
        raise ValueError("batch size B must be >= 4 for the mean field formulas (App. J); use B >= 4")
    return args


def _finish(value, B):
    return np.broadcast_to(np.asarray(value, dtype=B.dtype), B.shape).copy()
''',
}


def render_module(
    closed_forms: Mapping[str, sp.Expr],
    B: sp.Symbol,
    parameters: Sequence[sp.Symbol] = (),
    *,
    target: str = "jax",
    activation: str = "",
    version: str = "",
    command: str = "",
) -> str:
    """Source of a standalone module evaluating ``closed_forms`` (quantity -> expression).

    * ``B``: the batch-size symbol of the expressions; ``parameters``: the activation's free
      parameters, which become extra function arguments in this order.
    * ``target``: ``"jax"`` (imports only ``jax``) or ``"numpy"`` (only ``numpy``; ``scipy``
      as well if a formula needs erf/gamma).
    """
    if target not in TARGETS:
        raise CodegenError(f"unknown target {target!r}; use --target jax or --target numpy")
    pnames = _check_names(parameters)
    allowed = {B, *parameters}
    arg_list = ", ".join(["B", *pnames])
    functions: list[str] = []
    formulas: list[str] = []
    uses_special = False
    for q, expr in closed_forms.items():
        expr = sp.sympify(expr)
        extra = expr.free_symbols - allowed
        if extra:
            raise CodegenError(
                f"closed form of {q} has unexpected symbols {sorted(map(str, extra))}; bind them on the activation"
            )
        u = sp.Dummy("u", positive=True)  # u = 1/B: the form evaluated (exact; see fast/_stable.py)
        names = {B: "B", u: "_uB", **{p: n for p, n in zip(parameters, pnames)}}
        stable = stable_in_B(expr, B, u)
        series = large_B_form(stable, u)
        if series is not None:
            # B > switch: exact Taylor polynomial in 1/B (accurate B-derivatives); the closed form
            # only sees B <= switch (clamped, so its unused branch never makes a NaN gradient)
            uc = sp.Dummy("uc", positive=True)
            names[uc] = "_uC"
            stable = sp.Piecewise((series, sp.Symbol("_big")), (stable.xreplace({u: uc}), True))
        lines, (out,), printer = print_assignments([stable], names, target=target)
        if series is not None:
            a = TARGETS[target].array
            lines[:0] = [
                f"_B0 = {SWITCH_B[4]}.0 if B.dtype.itemsize <= 4 else {SWITCH_B[8]}.0  # static under jit",
                "_big = B > _B0",
                "_uB = 1/B",
                f"_uC = {a}.where(_big, 1/_B0, _uB)",
            ]
        elif stable.has(u):
            lines.insert(0, "_uB = 1/B")
        uses_special |= printer.used_special
        fname = function_name(q)
        latex = sp.latex(expr)
        formulas.append(f"    {fname}({arg_list}) = {latex}")
        doc = (
            f'    r"""{q}: {DESCRIPTIONS.get(q, q)}.\n\n'
            f"    .. math:: {latex}\n\n"
            f"    Broadcasts B{''.join(', ' + n for n in pnames)}; keeps a float input dtype.\n"
            '    """'
        )
        body = [
            f"def {fname}({arg_list}):",
            doc,
            f"    {arg_list}, = _prepare({arg_list})" if pnames else "    B, = _prepare(B)",
        ]
        body += [f"    {ln}" for ln in lines]
        body.append(f"    return _finish({out}, B)")
        functions.append("\n".join(body))
    tgt = TARGETS[target]
    imports = ["import jax", tgt.array_import] if target == "jax" else [tgt.array_import]
    if uses_special:
        imports.append(tgt.special_import)
    for bad in ('"""',):
        if any(bad in f for f in formulas):  # pragma: no cover - latex never contains triple quotes
            raise CodegenError("formula contains a triple quote")
    param_doc = (
        f"Activation parameters {', '.join(pnames)} are extra arguments after B (continuous: grad-able).\n"
        if pnames
        else ""
    )
    dtype_doc = (
        "Dtype: float inputs keep their dtype (float32 or float64); integer inputs are computed in\n"
        "JAX's default float (float64 when jax_enable_x64 is on, else float32).\n"
        "Eager calls with B < 4 raise ValueError (the theory needs B >= 4, App. J); under jit those\n"
        "entries are NaN. Every function is elementwise: jit-, vmap- and grad-able.\n"
        "Range and accuracy: finite at every B >= 4 (evaluated in the exact form in u = 1/B; above\n"
        f"B = {SWITCH_B[4]} (float32) / {SWITCH_B[8]} (float64) quantities without parameters use their exact\n"
        "Taylor polynomial in 1/B). Tested: float64 within a few ulp up to B = 1e300, float32 within 1e-5\n"
        "relative up to B = 1e30; B-derivatives within 1e-12 (float64) and 1e-4 (float32, 5e-4 just\n"
        "below the switch) of the exact derivative.\n"
        if target == "jax"
        else "Dtype: float inputs keep their dtype; integer inputs are computed in float64.\n"
        "B < 4 raises ValueError (the theory needs B >= 4, App. J).\n"
    )
    conventions = "\n".join(textwrap.wrap(CONVENTIONS, 96))
    header = (
        f'r"""Mean field quantities of batch-normalized networks for phi = {activation} '
        f"(generated by symbnmf {version}).\n\n"
        "Closed forms in the batch size B derived symbolically by symbnmf from the mean field theory\n"
        "of batch normalization (Yang, Pennington, Rao, Sohl-Dickstein, Schoenholz, ICLR 2019).\n"
        f"Standalone: depends only on {'jax' if target == 'jax' else 'numpy'}"
        f"{' and scipy.special' if uses_special and target == 'numpy' else ''}.\n\n"
        f"Conventions:\n{conventions}\n\n"
        f"Inputs: B (integer batch size >= 4; any real B >= 4 evaluates the formula) broadcast with\n"
        f"the activation parameters. {param_doc}{dtype_doc}\n"
        "Functions (LaTeX):\n" + "\n".join(formulas) + "\n\n"
        f"Regenerate with: {command or 'symbnmf codegen'}\n"
        '"""\n'
    )
    qmap = ",\n".join(f'    "{q}": {function_name(q)}' for q in closed_forms)
    src = (
        header
        + "\n".join(imports)
        + "\n\n"
        + f'SYMBNMF_VERSION = "{version}"\n'
        + f"ACTIVATION = {activation!r}\n"
        + f"PARAMETERS = {tuple(pnames)!r}\n"
        + f"CONVENTIONS = {CONVENTIONS!r}\n"
        + _PRELUDE[target]
        + "\n\n"
        + "\n\n\n".join(functions)
        + "\n\n\n#: quantity name -> function\nFUNCTIONS = {\n"
        + qmap
        + ",\n}\n__all__ = "
        + repr([function_name(q) for q in closed_forms] + ["FUNCTIONS"])
        + "\n"
    )
    compile(src, "<generated>", "exec")  # a printer bug must fail here, not in the user's import
    return src


def ordered(quantities: Sequence[str] | None) -> list[str]:
    """Validate quantity names (``None``: all), in :data:`QUANTITIES` order."""
    if quantities is None:
        return list(QUANTITIES)
    wanted = []
    for q in quantities:
        q = q.strip()
        if not q:
            continue
        alias = q.replace("_", ".", 1) if q not in QUANTITIES and q != "depth_scale" else q
        if alias not in QUANTITIES:
            raise CodegenError(f"unknown quantity {q!r}; choose from {', '.join(QUANTITIES)}")
        wanted.append(alias)
    if not wanted:
        raise CodegenError(f"no quantities given; choose from {', '.join(QUANTITIES)}")
    return [q for q in QUANTITIES if q in wanted]
