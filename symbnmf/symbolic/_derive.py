"""Stage 5: closed forms in B, derived from the definitions (:mod:`symbnmf.symbolic._quantities`).

For an activation that is piecewise polynomial with its kink at 0 (identity, ReLU, leaky ReLU,
integer-alpha ReLU, |x|, ...), every sphere integral of the two-coordinate form is evaluated by
the Gaussian lemmas of :mod:`symbnmf.symbolic._gaussian`; the result is a polynomial in
theta_B = arccos(1/(B-1)) and S_B = sqrt(B(B-2)) with coefficients rational in B and pi, reduced
with S_B^2 = B(B-2). Each quantity's formula then gives a ratio of two such polynomials.

Results are cached on disk (``SYMBNMF_CACHE_DIR``, default ``~/.cache/symbnmf``;
``SYMBNMF_NO_CACHE=1`` off), keyed by the activation, the package version and a fingerprint of
every source file that can reach the output (:func:`fingerprint_sources`) and SymPy's version.
An entry is trusted only if its HMAC (per-user key, mode 0600) matches its content, key and
fingerprint, and its expressions are read back without evaluating any text
(:mod:`symbnmf.symbolic._serialize`); any other entry is derived again
(:mod:`symbnmf.symbolic._diskcache`, shared with the cached quantity definitions).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import sympy as sp

from symbnmf._activations import Activation, get_activation
from symbnmf._conventions import CONVENTIONS, QUANTITIES
from symbnmf._errors import NoClosedFormError
from symbnmf.symbolic._algebra import B
from symbnmf.symbolic._derivation import (
    Derivation,
    Step,
    compact_latex,
    equation_latex,
    expectation_latex,
    monomial_latex,
    monomial_sum_latex,
    sphere_sum_latex,
)
from symbnmf.symbolic._diskcache import cache_dir as _cache_dir
from symbnmf.symbolic._diskcache import cache_secret as _cache_secret  # noqa: F401 - used by the tests
from symbnmf.symbolic._diskcache import code_fingerprint as _code_fingerprint
from symbnmf.symbolic._diskcache import fingerprint_sources as fingerprint_sources
from symbnmf.symbolic._diskcache import read_entry, write_entry
from symbnmf.symbolic._gaussian import (
    LEMMAS,
    S_sym,
    T_sym,
    closed_form_expectation,
    monomial_expansion,
    sphere_monomial_chain,
    to_explicit,
)
from symbnmf.symbolic._quantities import I_S, I_d, I_o, abstract_definitions

_LIMIT_EPS = sp.Symbol("epsilon", positive=True)
_MEMO: dict = {}


def _domain(params: tuple) -> Any:
    return sp.ZZ.frac_field(B, sp.pi, *params)


def _reduce(poly: sp.Poly) -> sp.Poly:
    """Reduce modulo S_B^2 - B(B-2)."""
    out = sp.Poly(0, T_sym, S_sym, domain=poly.domain)
    for (i, j), c in poly.terms():
        term = sp.Poly({(i, j % 2): c}, T_sym, S_sym, domain=poly.domain)
        if j >= 2:
            term = term * sp.Poly((B * (B - 2)) ** (j // 2), T_sym, S_sym, domain=poly.domain)
        out += term
    return out


def integral_closed_form(integral, hp, params: tuple) -> sp.Poly:
    """sum_c coeff_c E[f1 f2] in closed form, as a Poly in (theta_B, S_B) over Q(B, pi, params)."""
    dom = _domain(params)
    total = sp.Poly(0, T_sym, S_sym, domain=dom)
    for c, f1, f2 in integral.terms:
        val = sp.expand(c * closed_form_expectation(f1, f2, hp))
        total += sp.Poly(val, T_sym, S_sym, domain=dom)
    return _reduce(total)


def _clear(num: sp.Poly, den: sp.Poly) -> tuple[sp.Expr, sp.Expr]:
    """num/den (Polys over a fraction field) as a ratio of integral polynomials, tidied."""
    dom = num.domain
    n = num.as_expr()
    d = den.as_expr()
    q = sp.together(n / d)
    nn, dd = sp.fraction(q)
    nn = sp.Poly(sp.expand(nn), T_sym, S_sym, sp.pi, B, *[g for g in dom.symbols if g not in (B, sp.pi)])
    dd = sp.Poly(sp.expand(dd), T_sym, S_sym, sp.pi, B, *[g for g in dom.symbols if g not in (B, sp.pi)])
    g = sp.gcd(nn, dd)
    if g.total_degree() > 0 or g.as_expr() != 1:
        nn = sp.div(nn, g)[0]
        dd = sp.div(dd, g)[0]
    return _pretty(nn.as_expr()), _pretty(dd.as_expr())


def _pretty(e: sp.Expr) -> sp.Expr:
    """Collect a polynomial in theta_B, S_B with factored coefficients and content pulled out."""
    p = sp.Poly(sp.expand(e), T_sym, S_sym)
    if p.is_zero:
        return sp.S.Zero
    content = sp.factor(sp.gcd_list([c for c in p.coeffs()])) if len(p.coeffs()) > 1 else sp.S.One
    if content == 0:
        content = sp.S.One
    terms = [sp.factor(sp.cancel(c / content)) * T_sym**i * S_sym**j for (i, j), c in p.terms()]
    return sp.Mul(content, sp.Add(*terms), evaluate=False) if content != 1 else sp.Add(*terms)


@functools.cache
def _asymptotic_pieces(order: int) -> tuple[sp.Expr, sp.Expr]:
    """theta_B and S_B as truncated Laurent series in epsilon = 1/B."""
    e = _LIMIT_EPS
    Tser = sp.series(sp.acos(e / (1 - e)), e, 0, order).removeO()
    Sser = sp.expand(sp.series(sp.sqrt(1 - 2 * e), e, 0, order).removeO() / e)
    return Tser, Sser


def _leading(p: sp.Expr, order: int) -> tuple[int, sp.Expr, sp.Expr]:
    """(k, c0, c1) with p = eps^k (c0 + c1 eps + ...) as B = 1/eps -> infinity."""
    Tser, Sser = _asymptotic_pieces(order)
    e = sp.expand(p.subs({T_sym: Tser, S_sym: Sser, B: 1 / _LIMIT_EPS}))
    if e == 0:
        return 0, sp.S.Zero, sp.S.Zero
    shift = 4 * order
    poly = sp.Poly(sp.expand(e * _LIMIT_EPS**shift), _LIMIT_EPS)
    terms = sorted(poly.terms(), key=lambda t: t[0][0])
    k0 = terms[0][0][0]
    coeffs = dict((m[0], c) for m, c in terms)
    return k0 - shift, sp.cancel(coeffs.get(k0, 0)), sp.cancel(coeffs.get(k0 + 1, 0))


def _series(num: sp.Expr, den: sp.Expr, order: int = 6) -> tuple[sp.Expr, sp.Expr]:
    """(q_inf, c1) with num/den = q_inf + c1/B + O(1/B^2), num/den polynomials in B, theta_B, S_B.

    theta_B = pi/2 - 1/B - 1/B^2 + ... and S_B = B sqrt(1 - 2/B) are expanded to ``order`` terms
    (more than enough: the convergence-order test checks the O(1/B^2) remainder numerically).
    """
    if num == 0:
        return sp.S.Zero, sp.S.Zero
    kn, n0, n1 = _leading(num, order)
    kd, d0, d1 = _leading(den, order)
    if kn < kd:
        return sp.oo, sp.nan
    if kn > kd:
        return sp.S.Zero, sp.factor(sp.simplify(n0 / d0)) if kn - kd == 1 else sp.S.Zero
    q0 = sp.factor(sp.simplify(n0 / d0))
    c1 = sp.factor(sp.simplify((n1 * d0 - n0 * d1) / d0**2))
    return q0, c1


def _activation_key(act: Activation) -> str:
    """Cache key: package version, source fingerprint, activation expression and label."""
    from symbnmf import __version__

    text = f"{__version__}|{_code_fingerprint()}|{sp.__version__}|{sp.srepr(act.bound_expr)}|{act.label}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _read_cache(cfile: Path, key: str) -> Derivation | None:
    """The cached derivation if its entry is authentic (HMAC over content, key and source fingerprint).

    Anything else (missing, unreadable, edited, forged, stale, malformed) returns None: the caller
    derives again and replaces the entry. Stored expressions are read without evaluation
    (:func:`~symbnmf.symbolic._serialize.read_srepr`), so even a forged entry cannot run code.
    """
    body = read_entry(cfile, key, "derivation")
    if body is None:
        return None
    try:
        return Derivation.from_json(json.loads(body))
    except Exception:  # a bad entry is never trusted, only re-derived
        return None


def _write_cache(cfile: Path, key: str, d: Derivation) -> None:
    write_entry(cfile, key, "derivation", json.dumps(d.to_json()))


def _canonical(expr: sp.Expr) -> sp.Expr:
    """The form a cached expression is read back in, so that cold and warm runs print the same text."""
    from symbnmf.symbolic._serialize import read_srepr

    return read_srepr(sp.srepr(expr))


def derive(activation: str | Activation, *, use_cache: bool = True, limits: bool = True) -> Derivation:
    """Closed forms in B of every mean-field quantity of ``activation`` (Thm 3.1, 3.6-3.10).

    Conventions of ``docs/theory.md`` (sigma_w^2 = 1, sigma_b^2 = 0, gamma = 1, beta = 0,
    eps = 0). Returns a :class:`~symbnmf.Derivation` whose ``quantities`` maps each name of
    :data:`symbnmf.QUANTITIES` to a SymPy expression in ``B`` (and the activation's free
    parameters, e.g. leaky ReLU's ``a``), with the derivation steps and large-B limits.

    Raises :class:`~symbnmf.NoClosedFormError` when phi is not piecewise polynomial with its kink
    at 0 (use ``symbnmf.evaluate(..., method="quadrature")`` for those).
    """
    act = get_activation(activation)
    act.require_nondegenerate()
    memo_key = (_activation_key(act), limits)
    if use_cache and memo_key in _MEMO:
        return _MEMO[memo_key]
    hp = act.half_polynomial
    if hp is None:
        raise NoClosedFormError(
            f"activation {act.label!r} has no closed form in symbnmf (only piecewise-polynomial phi with its kink "
            "at 0: identity, relu, leaky_relu, integer alpha_relu, abs); use the quadrature path: "
            f"`symbnmf eval '{act.name}' --batch-size B` or evaluate(..., method='quadrature')"
        )
    cdir = _cache_dir() if use_cache else None
    key = _activation_key(act)
    cfile = cdir / f"derive-{key}-{int(limits)}.json" if cdir else None
    if cfile is not None:
        cached = _read_cache(cfile, key)
        if cached is not None:
            _MEMO[memo_key] = cached
            return cached
    try:
        d = _derive(act, hp, limits=limits)
    except (sp.polys.polyerrors.CoercionFailed, sp.polys.polyerrors.PolynomialError) as exc:
        # e.g. relu(x) + 1 (odd half-moments bring Gamma-function ratios in B), E*x, sqrt(2) slopes:
        # outside the coefficient field Q(B, pi, parameters) of the closed-form engine
        raise NoClosedFormError(
            f"activation {act.label[:80]!r} is piecewise polynomial but its closed form needs coefficients "
            f"outside Q(B, pi, parameters) ({type(exc).__name__}); use the quadrature path: "
            "`symbnmf eval ACT -B B` (auto) or evaluate(..., method='quadrature')"
        ) from None
    if use_cache:
        _MEMO[memo_key] = d
    if cfile is not None:
        _write_cache(cfile, key, d)
    return d


def _derive(act: Activation, hp, *, limits: bool) -> Derivation:
    from symbnmf import __version__

    params = act.free_parameters
    defs = abstract_definitions()
    d = Derivation(activation=act.label, phi=act.bound_expr, conventions=CONVENTIONS, version=__version__)
    cache: dict = {}
    ratios: dict = {}

    def cf(integral) -> sp.Poly:
        key = integral.terms
        if key not in cache:
            cache[key] = integral_closed_form(integral, hp, params)
        return cache[key]

    Id, Io = cf(defs["fixed_point.diag"].integrals[I_d]), cf(defs["fixed_point.offdiag"].integrals[I_o])
    mu = Id - Io
    phi_steps = [
        Step(
            "Activation",
            sp.Eq(sp.Function(r"\phi")(sp.Symbol("x")), act.bound_expr),
            "phi = p + H q with p = %s, q = %s (piecewise polynomial, kink at 0)" % (hp.p.as_expr(), hp.q.as_expr()),
        ),
    ]
    for name in QUANTITIES:
        if name == "depth_scale":
            continue
        qd = defs[name]
        steps = list(phi_steps)
        steps.append(Step("Definition", qd.definition_latex, qd.theorem + "; conventions of docs/theory.md"))
        if qd.test_direction is not None:
            steps.append(
                Step(
                    "Test direction",
                    sp.Eq(sp.Symbol(r"\|\Delta\|^2"), qd.test_direction.inner(qd.test_direction)),
                    "piece %s of Sym(1-perp) is irreducible and appears once: Rayleigh quotient = eigenvalue (Thm 3.6)"
                    % name[-1],
                )
            )
        if name.startswith("backward"):
            steps.append(
                Step(
                    "Radial factor",
                    sp.Eq(sp.Symbol(r"\mathbb{E}\,B/\|Gh\|^2"), B / ((B - 3) * sp.Symbol(r"\mu^*"))),
                    "h ~ N(0, Sigma*): |Gh|^2 = mu* chi^2_{B-1} independent of y; E 1/chi^2_k = 1/(k-2)",
                )
            )
        if name.startswith("forward"):
            steps.append(
                Step(
                    "Score derivative",
                    r"\mathrm{d}V[\Delta] = \tfrac12\mathbb{E}\big[\phi\phi^\top(\tfrac{B-1}{B}y^\top\Delta y - \operatorname{tr}\Delta)\big]",
                    "d/dt N(0, G + t Delta) density = (h^T Delta h - tr Delta)/2; E r^2 = B-1 (radial-angular independence)",
                )
            )
        subs_cf = {}
        for ph, integral in qd.integrals.items():
            subs_cf[ph] = cf(integral)
        targets = [I_S] if I_S in qd.integrals else list(qd.integrals)
        for ph in targets:
            steps += _sphere_integral_steps(ph, qd.integrals[ph], hp, subs_cf[ph])
        steps.append(
            Step(
                "Fixed point scale",
                equation_latex(r"\mu^*", to_explicit(mu.as_expr()), name=r"\mu"),
                "mu* = Sigma*_ii - Sigma*_ij",
            )
        )
        # formula = c(B) * I / (...): evaluate as a ratio of polynomials in theta_B, S_B
        num, den = _formula_ratio(qd.formula, subs_cf, mu)
        expr = to_explicit(num) / to_explicit(den) if den != 1 else to_explicit(num)
        if num == 0:
            expr = sp.S.Zero
        d.quantities[name] = _canonical(expr)
        ratios[name] = (num, den)
        steps.append(
            Step(
                "Result",
                equation_latex(_sym(name), expr, name=_sym(name)),
                "substitute and simplify (S_B^2 = B(B-2))",
            )
        )
        d.steps[name] = steps
    lamG = d.quantities["backward.G"]
    d.quantities["depth_scale"] = _canonical(1 / sp.log(lamG))
    d.steps["depth_scale"] = [
        Step(
            "Definition",
            sp.Eq(sp.Symbol(r"\xi"), 1 / sp.log(sp.Symbol(r"\lambda^{\downarrow}_G"))),
            "depth scale of gradient explosion (Sec. 3.3): |grad|^2 grows like exp(l/xi)",
        )
    ]
    if limits:
        for name in QUANTITIES:
            if name == "depth_scale":
                continue
            d.limits[name] = tuple(_canonical(v) for v in _series(*ratios[name]))
        if "backward.G" in d.limits and sp.simplify(d.limits["backward.G"][0] - 1) != 0:
            # (for backward.G -> 1, as for the identity, xi grows like B and has no finite limit)
            q0, c1 = d.limits["backward.G"]
            d.limits["depth_scale"] = tuple(_canonical(v) for v in _series_of_depth(q0, c1))
    return d


_PLACEHOLDER_DEFINITION = {
    I_d: r"I_d = \mathbb{E}\bigl[\phi(y_1)^{2}\bigr]",
    I_o: r"I_o = \mathbb{E}\bigl[\phi(y_1)\,\phi(y_2)\bigr]",
}


def _sphere_integral_steps(ph: sp.Symbol, integral, hp, closed: sp.Poly) -> list[Step]:
    """The steps from a sphere integral to its closed form, every lemma's result shown:

    orbit reduction to two coordinates; expansion of phi = p + H q into sphere monomials;
    standard Gaussian moments (Lemmas half_moment, regression, wedge); sphere monomials from
    them (Lemmas sphere_to_gaussian, gaussian_pair, chi_moment); the sum.
    """
    name = sp.latex(ph)
    steps = []
    if ph == I_S:
        steps.append(
            Step(
                "Orbit reduction",
                sphere_sum_latex(name, integral.terms),
                "Lemmas orbit, conditional_sphere, sphere_moments (exact in B); y_1, y_2 two distinct coordinates",
            )
        )
    else:
        steps.append(Step("Sphere integral", _PLACEHOLDER_DEFINITION[ph], "definition (Thm 3.1, App. F)"))
    if not integral.terms:  # the sum vanishes identically
        return steps
    pairs = list(dict.fromkeys((f1, f2) for _, f1, f2 in integral.terms))
    expansions = [(f1, f2, monomial_expansion(f1, f2, hp)) for f1, f2 in pairs]
    steps.append(
        Step(
            "Expansion in sphere monomials",
            " \\\\\n".join(monomial_sum_latex(expectation_latex(f1, f2), ex) for f1, f2, ex in expansions),
            "phi = p + H q, phi' = p' + H q' with H the Heaviside step (H^2 = H); linearity",
        )
    )
    keys = list(dict.fromkeys(k for _, _, ex in expansions for _, k in ex))
    chains = {k: sphere_monomial_chain(k) for k in keys}
    steps.append(
        Step(
            "Standard Gaussian moments",
            " \\\\\n".join(
                equation_latex(monomial_latex(k, gaussian=True), chains[k][1], name=f"m_{{{i + 1}}}")
                for i, k in enumerate(keys)
            ),
            "Lemmas half_moment, regression, wedge: x_1, x_2 standard normal with correlation rho = cos psi, "
            "s = sin psi",
        )
    )
    steps.append(
        Step(
            "Sphere monomials",
            " \\\\\n".join(_monomial_lines(k, chains[k], f"M_{{{i + 1}}}") for i, k in enumerate(keys)),
            "Lemmas sphere_to_gaussian, gaussian_pair, chi_moment: y_j = sqrt(B) z_j/|z| with z ~ N(0, G) "
            "independent of |z|, z_j = sqrt((B-1)/B) x_j; the Gaussian moment is taken at rho = -1/(B-1), "
            "s = S_B/(B-1), psi = pi - theta_B",
        )
    )
    steps.append(
        Step(
            "Closed form of the sphere integral",
            equation_latex(name, _tidy(closed), name=name),
            "sum of the above; S_B^2 = B(B-2)",
        )
    )
    return steps


def _monomial_lines(key: tuple, chain: tuple, name: str) -> str:
    """E[sphere monomial] = factor * E[Gaussian monomial] = value, as gather* lines."""
    factor, _, value = chain
    gauss = monomial_latex(key, gaussian=True)
    first = monomial_latex(key) + " = " + (gauss if factor == 1 else rf"{compact_latex(factor)}\,{gauss}")
    value_poly = _reduce(sp.Poly(value, T_sym, S_sym, domain=sp.ZZ.frac_field(B, sp.pi)))
    return first + " \\\\\n" + equation_latex(r"\qquad", _tidy(value_poly), name=name)


def _tidy(poly: sp.Poly) -> sp.Expr:
    """A polynomial in theta_B, S_B (over a fraction field) as one fraction with factored
    coefficients, for display."""
    num, den = _clear(poly, sp.Poly(1, T_sym, S_sym, domain=poly.domain))
    return to_explicit(num) / to_explicit(den) if den != 1 else to_explicit(num)


def _series_of_depth(q0: sp.Expr, c1: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """xi = 1/ln(q0 + c1/B): its limit and first 1/B correction (infinite for q0 = 1)."""
    return sp.simplify(1 / sp.log(q0)), sp.simplify(-c1 / (q0 * sp.log(q0) ** 2))


def _formula_ratio(formula: sp.Expr, subs_cf: dict, mu: sp.Poly) -> tuple[sp.Expr, sp.Expr]:
    """Evaluate ``formula`` (rational in B and the placeholders) on the closed forms."""
    num_f, den_f = sp.fraction(sp.together(formula))
    dom = mu.domain

    def ev(e: sp.Expr) -> sp.Poly:
        # e is a polynomial in the placeholders with coefficients in Q(B)
        p = sp.Poly(sp.expand(e), *subs_cf.keys())
        out = sp.Poly(0, T_sym, S_sym, domain=dom)
        for mon, c in p.terms():
            term = sp.Poly(c, T_sym, S_sym, domain=dom)
            for ph, k in zip(subs_cf.keys(), mon):
                for _ in range(k):
                    term = term * subs_cf[ph]
            out += term
        return _reduce(out)

    n = ev(num_f)
    if n.is_zero:
        return sp.S.Zero, sp.S.One
    dn = ev(den_f)
    return _clear(n, dn)


def _sym(name: str) -> str:
    from symbnmf.symbolic._derivation import QUANTITY_SYMBOLS

    return QUANTITY_SYMBOLS[name]


__all__ = ["LEMMAS", "derive"]
