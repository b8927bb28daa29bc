"""Standalone JAX/NumPy modules of the eps > 0 closed forms (issue 12; ``symbnmf codegen ACT --eps``).

Design (documented in the generated module's docstring): eps, sigma_w^2 and gamma are **symbolic
arguments** of the generated functions (``epsilon``, ``sigma_w2``, ``gamma``), with the values given
on the command line (``--eps``, ``--weight-var``, ``--gamma``) as their defaults. The module holds

* ``fixed_point_map(B, mu, ...)``: F(mu) of mu = F(mu) (closed form);
* ``collapse_slope(B, ...)``, ``collapse_boundary(B, ...)``: lim F(mu)/mu and eps_c (closed form);
* one function per quantity of :data:`symbnmf.QUANTITIES` *at a given mu* (``backward_G(B, mu, ...)``);
* ``fixed_point_mu(B, ...)``: mu* by vectorised bisection in log mu (the root is transcendental),
  0 in the collapsed phase; ``evaluate(B, ...)``: every quantity at mu* (collapsed-phase limits
  where the slope is <= 1).

The closed forms are :func:`symbnmf.derive_eps`'s, printed by :mod:`symbnmf.fast._jaxprint`
(P_nu(z) = e^z E_nu(z) via the embedded helper of :mod:`symbnmf.fast._specfun`).
"""

from __future__ import annotations

import textwrap
from typing import Any

import sympy as sp

from symbnmf._conventions import CONVENTIONS, QUANTITIES
from symbnmf.fast._codegen_module import function_name
from symbnmf.fast._jaxprint import TARGETS, CodegenError, helper_sources, print_assignments

#: bisection steps of the generated root finder and the width of its log-mu bracket
BISECTION_STEPS = 90
LOG_BRACKET = 90.0


def _function(name: str, expr: sp.Expr, args: list[tuple[sp.Symbol, str]], sig: str, doc: str, target: str):
    names = dict(args)
    extra = sp.sympify(expr).free_symbols - set(names)
    if extra:
        raise CodegenError(f"{name}: unexpected symbols {sorted(map(str, extra))}; bind them on the activation")
    lines, (out,), printer = print_assignments([expr], names, target=target)
    body = [f"def {name}({sig}):", f'    r"""{doc}"""'] + [f"    {ln}" for ln in lines] + [f"    return {out}"]
    return "\n".join(body), printer


def eps_module(
    activation: Any,
    *,
    eps: Any = None,
    weight_var: Any = 1,
    gamma: Any = 1,
    target: str = "jax",
    command: str = "",
) -> str:
    """Source of a standalone module of the eps > 0 closed forms of ``activation`` (see module doc).

    ``eps``/``weight_var``/``gamma``: default values of the generated functions' ``epsilon``,
    ``sigma_w2``, ``gamma`` arguments (``eps=None``: ``epsilon`` has no default).
    """
    from symbnmf import __version__
    from symbnmf._activations import get_activation
    from symbnmf.numeric._epsilon import check_bn_parameters
    from symbnmf.symbolic._algebra import B
    from symbnmf.symbolic._epsforms import EPS, GAMMA, MU, WEIGHT_VAR, derive_eps

    if target not in TARGETS:
        raise CodegenError(f"unknown target {target!r}; use --target jax or --target numpy")
    act = get_activation(activation)
    e, s, g, _ = check_bn_parameters(1 if eps is None else eps, weight_var, gamma, 0)
    if not g > 0 or (eps is not None and not e > 0):
        raise CodegenError("the eps closed forms need eps > 0 and gamma > 0; pass e.g. --eps 0.001 --gamma 1")
    d = derive_eps(act)
    params = list(act.free_parameters)
    bound = act.bindings
    pnames = [p.name for p in params]
    for n in pnames:
        if n in {"B", "mu", "epsilon", "sigma_w2", "gamma"} or n.startswith("_"):
            raise CodegenError(f"activation parameter name {n!r} clashes with the generated code; rename it")
    defaults = {
        "epsilon": "" if eps is None else f"={float(e)!r}",
        "sigma_w2": f"={float(s)!r}",
        "gamma": f"={float(g)!r}",
    }
    kw = (", *, " + ", ".join(pnames)) if pnames else ""
    kw_call = "".join(f", {n}={n}" for n in pnames)
    sig_eps = f"epsilon{defaults['epsilon']}, sigma_w2{defaults['sigma_w2']}, gamma{defaults['gamma']}"
    sig_mu = f"B, mu, {sig_eps}{kw}"
    sig_nomu = f"B, {sig_eps}{kw}"
    args = [(B, "B"), (MU, "mu"), (EPS, "epsilon"), (WEIGHT_VAR, "sigma_w2"), (GAMMA, "gamma")]
    args += [(p, p.name) for p in params]
    helpers: set[str] = set()
    uses_special = False
    funcs: list[str] = []

    def add(name: str, expr: sp.Expr, sig: str, doc: str) -> None:
        nonlocal uses_special
        expr = sp.sympify(expr).subs(bound) if bound else sp.sympify(expr)
        src, pr = _function(name, expr, args, sig, doc, target)
        helpers.update(pr.used_helpers)
        uses_special |= pr.used_special
        funcs.append(src)

    add("fixed_point_map", d.fixed_point_map, sig_mu, "F(mu): mu of the next layer; the fixed point solves mu = F(mu).")
    add("collapse_slope", d.collapse_slope, sig_nomu, "lim_{mu->0+} F(mu)/mu: BSB1 phase iff > 1, else collapsed.")
    add("collapse_boundary", d.collapse_boundary, sig_nomu, "eps_c: collapse slope = 1 (BSB1 iff eps < eps_c).")
    mu_scale = WEIGHT_VAR * GAMMA**2 * (d.sphere["a"] - d.sphere["b"])
    add("mu_scale", mu_scale, sig_nomu, "sigma_w^2 gamma^2 mu_0: the supremum of F (bracket of mu*).")
    names = [q for q in QUANTITIES if q != "depth_scale"]
    for q in names:
        add(function_name(q), d.quantities[q], sig_mu, f"{q} at pre-activation scale mu (evaluate at mu = mu*).")
        if q in d.collapsed:
            add("collapsed_" + function_name(q), d.collapsed[q], sig_nomu, f"{q}: mu -> 0+ limit (collapsed phase).")
    a = TARGETS[target].array
    loop = (
        "    def _step(i, lohi):\n"
        "        lo, hi = lohi\n"
        "        mid = 0.5 * (lo + hi)\n"
        f"        up = {a}.log(fixed_point_map(B, {a}.exp(mid), epsilon, sigma_w2, gamma{kw_call})) > mid\n"
        f"        return {a}.where(up, mid, lo), {a}.where(up, hi, mid)\n\n"
        f"    lo, hi = jax.lax.fori_loop(0, {BISECTION_STEPS}, _step, (lo, hi))\n"
        if target == "jax"
        else f"    for _ in range({BISECTION_STEPS}):\n"
        "        mid = 0.5 * (lo + hi)\n"
        f"        up = {a}.log(fixed_point_map(B, {a}.exp(mid), epsilon, sigma_w2, gamma{kw_call})) > mid\n"
        f"        lo, hi = {a}.where(up, mid, lo), {a}.where(up, hi, mid)\n"
    )
    funcs.append(
        f"def fixed_point_mu({sig_nomu}):\n"
        '    r"""mu* > 0 (BSB1 phase) by bisection of log F(mu) - log mu (decreasing) on\n'
        f'    [log mu_scale - {LOG_BRACKET}, log mu_scale]; 0 in the collapsed phase (collapse_slope <= 1)."""\n'
        f"    B, epsilon, sigma_w2, gamma = {a}.broadcast_arrays(*[{a}.asarray(v, dtype=float) "
        "for v in (B, epsilon, sigma_w2, gamma)])\n"
        f"    hi = {a}.log(mu_scale(B, epsilon, sigma_w2, gamma{kw_call}))\n"
        f"    lo = hi - {LOG_BRACKET!r}\n"
        + loop
        + f"    bsb1 = collapse_slope(B, epsilon, sigma_w2, gamma{kw_call}) > 1\n"
        f"    return {a}.where(bsb1, {a}.exp(0.5 * (lo + hi)), 0.0)\n"
    )
    ev = [
        f"def evaluate({sig_nomu}):",
        '    r"""Every quantity at the fixed point mu* (collapsed-phase limits where collapse_slope <= 1):',
        '    a dict with "mu", "bsb1" (bool) and one entry per quantity."""',
        f"    mu = fixed_point_mu(B, epsilon, sigma_w2, gamma{kw_call})",
        f"    bsb1 = collapse_slope(B, epsilon, sigma_w2, gamma{kw_call}) > 1",
        f"    safe = {a}.where(bsb1, mu, 1.0)",
        '    out = {"mu": mu, "bsb1": bsb1}',
    ]
    for q in names:
        fn = function_name(q)
        at_mu = f"{fn}(B, safe, epsilon, sigma_w2, gamma{kw_call})"
        if q in d.collapsed:
            col = f"collapsed_{fn}(B, epsilon, sigma_w2, gamma{kw_call})"
        else:
            col = "0.0"
        ev.append(f'    out["{q}"] = {a}.where(bsb1, {at_mu}, {col})')
    ev.append(f'    out["depth_scale"] = {a}.where(out["backward.G"] > 1, 1.0 / {a}.log(out["backward.G"]), {a}.nan)')
    ev.append("    return out")
    funcs.append("\n".join(ev))
    tgt = TARGETS[target]
    imports = ["import jax", tgt.array_import] if target == "jax" else [tgt.array_import]
    if uses_special or helpers:
        imports.append(tgt.special_import)
    conventions = "\n".join(textwrap.wrap(CONVENTIONS, 96))
    header = (
        f'r"""eps > 0 mean field theory of batch normalization for phi = {act.label} '
        f"(generated by symbnmf {__version__}).\n\n"
        "Closed forms derived by symbnmf.derive_eps (issue 12): BN with eps > 0, weight variance sigma_w2,\n"
        "x = phi(gamma BN(h)) (beta = 0, gamma > 0; sigma_b^2 drops out). Every quantity is a closed form\n"
        "in (B, mu, epsilon, sigma_w2, gamma) through P_nu(z) = exp(z) E_nu(z); evaluate it at the fixed\n"
        "point mu* (fixed_point_mu, a numeric root of the closed-form map), or call evaluate().\n"
        "epsilon, sigma_w2, gamma are arguments; their defaults are the values given to symbnmf codegen.\n"
        "Float64 accuracy: ~1e-13 relative except where B eps/mu is large (near the collapse boundary the\n"
        "backward forms lose about log10(B eps/mu) digits to cancellation).\n\n"
        f"Conventions (eps = 0 part):\n{conventions}\n\n"
        f"Regenerate with: {command or 'symbnmf codegen --eps'}\n"
        '"""\n'
    )
    body = "\n\n\n".join([helper_sources(helpers, target)] + funcs) if helpers else "\n\n\n".join(funcs)
    qmap = ", ".join(f'"{q}": {function_name(q)}' for q in names)
    return (
        header
        + "\n".join(imports)
        + "\n\n"
        + f'SYMBNMF_VERSION = "{__version__}"\nACTIVATION = {act.label!r}\nPARAMETERS = {tuple(pnames)!r}\n\n\n'
        + body
        + f"\n\n\n#: quantity name -> function of (B, mu, epsilon, sigma_w2, gamma)\nFUNCTIONS = {{{qmap}}}\n"
    )
