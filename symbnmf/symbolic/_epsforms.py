"""Closed forms of the eps > 0 theory for the positive-homogeneous family (issue 12, part 3).

Definitions: :mod:`symbnmf.symbolic._epsilon` (read its docstring first). For phi positive-
homogeneous of degree 1 with its kink at 0 (identity, ReLU, leaky ReLU) at beta = 0 and gamma > 0,
phi(gamma t y) = gamma t phi(y), so every tau-dependent sphere integral separates exactly:

    a(tau) = gamma^2 tau a_1,  b(tau) = gamma^2 tau b_1,  Q_X(tau) = gamma^2 tau Q_X,
    T_X(tau) = gamma^2 tau T_X,  K_{X,k}(tau) = gamma^2 K_{X,k}             (Lemma ``eps_separation``)

with a_1, b_1, Q_X, T_X, K_{X,k} the eps = 0 sphere integrals, in closed form in B by the
Gaussian lemmas of :func:`symbnmf.symbolic._derive.integral_closed_form`. What remains are radial
chi-square moments with s ~ chi^2_k, k = B - 1 and c = B eps/mu, all derived here by SymPy from the
chi^2 density (:func:`radial_lemmas`) in terms of the scaled generalised exponential integral

    P_nu(z) = e^z E_nu(z)   (:class:`expint_scaled`; P_nu(0) = 1/(nu - 1) for nu > 1).

The fixed point mu* solves mu = F(mu) = sigma_w^2 gamma^2 mu_0 E[tau](mu) (mu_0 = a_1 - b_1):
the map is closed form, the root is transcendental in mu and is found numerically
(:func:`symbnmf.numeric._epsforms.solve_fixed_point_closed`). The collapse boundary (the mu -> 0+
slope of F(mu)/mu equal to 1) is closed form: sigma_w^2 gamma^2 mu_0 (B-1)/(B eps) = 1.
Never imports JAX or mpmath-level numerics (the mpmath evaluation is in ``numeric/_epsforms.py``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import sympy as sp
from sympy.core.function import ArgumentIndexError

from symbnmf._activations import Activation, get_activation
from symbnmf._conventions import CONVENTIONS, QUANTITIES
from symbnmf._errors import NoClosedFormError
from symbnmf.symbolic._algebra import B
from symbnmf.symbolic._derivation import Derivation, Step
from symbnmf.symbolic._gaussian import Lemma

#: Symbols of the eps > 0 closed forms (besides B and the activation's parameters).
EPS = sp.Symbol("epsilon", positive=True)
WEIGHT_VAR = sp.Symbol("sigma_w2", positive=True)
GAMMA = sp.Symbol("gamma", positive=True)
MU = sp.Symbol("mu", positive=True)

# lemma symbols: s ~ chi^2_k, c > 0
_k, _c, _s = sp.symbols("k c s", positive=True)


class expint_scaled(sp.Function):  # a SymPy function name, printed by fast._jaxprint
    r"""P_nu(z) = e^z E_nu(z), the scaled generalised exponential integral (z >= 0).

    P_nu(z) = int_0^oo e^{-z v} (1 + v)^{-nu} dv is bounded (<= 1/(nu - 1) for nu > 1) and never
    overflows, unlike e^z and E_nu(z) separately; dP/dz = P_nu - P_{nu-1}; P_nu(0) = 1/(nu - 1).
    """

    nargs = 2

    @classmethod
    def eval(cls, nu: sp.Expr, z: sp.Expr) -> sp.Expr | None:
        if z.is_zero and (nu - 1).is_positive:
            return 1 / (nu - 1)
        return None

    def fdiff(self, argindex: int = 2) -> sp.Expr:
        if argindex != 2:
            raise ArgumentIndexError(self, argindex)
        nu, z = self.args
        return self - expint_scaled(nu - 1, z)

    def _eval_rewrite_as_expint(self, nu: sp.Expr, z: sp.Expr, **kwargs: Any) -> sp.Expr:
        return sp.exp(z) * sp.expint(nu, z)

    def _eval_evalf(self, prec: int) -> sp.Expr | None:
        nu, z = (a.evalf(prec) for a in self.args)
        if not (nu.is_Number and z.is_Number):
            return None
        import mpmath

        with mpmath.workprec(2 * prec + 64):  # mpmath's expint loses digits at large orders
            zz, nn = mpmath.mpf(sp.Float(z, prec)._mpf_), mpmath.mpf(sp.Float(nu, prec)._mpf_)
            v = mpmath.exp(zz) * mpmath.expint(nn, zz) if zz > 0 else 1 / (nn - 1)
            return sp.Float._new(mpmath.mpf(v)._mpf_, prec)

    def _latex(self, printer: Any, exp: Any = None) -> str:
        nu, z = self.args
        s = r"\mathcal{P}_{%s}\left(%s\right)" % (printer._print(nu), printer._print(z))
        return s if exp is None else "%s^{%s}" % (s, exp)


def to_scaled(expr: sp.Expr) -> sp.Expr:
    """Rewrite every exp(z) expint(nu, z) (same z) as :class:`expint_scaled` (nu, z)."""
    expr = sp.powsimp(sp.expand(expr))

    def repl(node: sp.Basic) -> sp.Basic:
        if not isinstance(node, sp.Mul):
            return node
        eis = [f for f in node.args if isinstance(f, sp.expint)]
        exps = [f for f in node.args if isinstance(f, sp.exp)]
        for ei in eis:
            for ex in exps:
                if sp.simplify(ex.args[0] - ei.args[1]) == 0:
                    rest = [f for f in node.args if f is not ei and f is not ex]
                    return sp.Mul(*rest) * expint_scaled(*ei.args)
        return node

    return expr.replace(lambda n: isinstance(n, sp.Mul), repl)


def at_eps_zero(expr: sp.Expr) -> sp.Expr:
    """expr at eps = 0 (c = 0): each P_nu(0) -> 1/(nu - 1), valid because every order that occurs is
    at least (B - 1)/2 >= 3/2 for B >= 4 (P_nu is continuous at 0 for nu > 1)."""
    e = expr.subs(EPS, 0)
    return e.replace(lambda n: isinstance(n, expint_scaled) and n.args[1] == 0, lambda n: 1 / (n.args[0] - 1))


# ---------------------------------------------------------------------------------------------
# radial lemmas
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RadialLemma:
    """E_{s ~ chi^2_k}[integrand(s)] = closed(k, c): certified numerically in the tests."""

    name: str
    integrand: sp.Expr  # in s, k, c
    closed: sp.Expr  # in k, c
    proof: str

    @property
    def lemma(self) -> Lemma:
        lhs = sp.Function(r"\mathbb{E}_{s\sim\chi^2_k}")(self.integrand)
        return Lemma(self.name, sp.Eq(lhs, self.closed, evaluate=False), self.proof)

    def latex(self) -> str:
        return self.lemma.latex()


def chi2_density(k: sp.Expr = _k, s: sp.Expr = _s) -> sp.Expr:
    """The chi^2_k density."""
    return s ** (k / 2 - 1) * sp.exp(-s / 2) / (2 ** (k / 2) * sp.gamma(k / 2))


@functools.cache
def radial_lemmas() -> dict[str, RadialLemma]:
    """The chi^2 moments of the eps > 0 closed forms, derived by SymPy from the chi^2 density.

    * ``chi2_resolvent``: E 1/(s+c) = (1/2) P_{k/2}(c/2) (Laplace transform of the density; see
      :func:`symbnmf.symbolic._epsilon.chi2_resolvent`);
    * ``chi2_size_bias``: s p_k(s) = k p_{k+2}(s) (SymPy simplifies the ratio of densities to 1), so
      E_k[s^j g(s)] = k (k+2) ... (k+2j-2) E_{k+2j}[g(s)];
    * ``chi2_resolvent_power``: E 1/(s+c)^{n+1} = (-1)^n/n! d^n/dc^n E 1/(s+c) (differentiating under
      the integral, dP_nu/dz = P_nu - P_{nu-1});
    * the moments used: E[s/(s+c)] (= E tau), E[s^2/(s+c)] (= E s tau), E[s^j/(s+c)^{j+1}], j = 0, 1, 2
      (= mu/B E[B tau^j/(mu s + B eps)]).
    """
    from symbnmf.symbolic._epsilon import chi2_resolvent

    R0, (kk, cc) = chi2_resolvent()
    R = to_scaled(R0.subs({kk: _k, cc: _c}))
    if R.has(sp.expint) or not R.has(expint_scaled):
        raise AssertionError(f"unexpected form of the chi^2 resolvent: {R0}")
    ratio = sp.simplify(_s * chi2_density(_k) / (_k * chi2_density(_k + 2)))
    if ratio != 1:
        raise AssertionError(f"size-bias identity failed: {ratio}")

    def resolvent(m: sp.Expr, n: int) -> sp.Expr:
        """E_m 1/(s + c)^{n+1}."""
        e = R.subs(_k, m)
        return sp.expand((-1) ** n * sp.diff(e, _c, n) / sp.factorial(n))

    def moment(j: int, n: int) -> sp.Expr:
        """E_k s^j/(s+c)^{n+1} by size bias."""
        pref = sp.Mul(*[_k + 2 * i for i in range(j)])
        return sp.expand(pref * resolvent(_k + 2 * j, n))

    lemmas = {
        "chi2_resolvent": RadialLemma(
            "chi2_resolvent",
            1 / (_s + _c),
            R,
            "1/(s+c) = int_0^oo e^{-v(s+c)} dv, E e^{-vs} = (1+2v)^{-k/2}; w = 1+2v gives e^{c/2} E_{k/2}(c/2)/2",
        ),
        "chi2_size_bias": RadialLemma(
            "chi2_size_bias",
            _s / (_s + _c),
            moment(1, 0),
            "s p_k(s) = k p_{k+2}(s) (ratio of the densities simplified by SymPy), then chi2_resolvent at k+2",
        ),
        "chi2_second_size_bias": RadialLemma(
            "chi2_second_size_bias",
            _s**2 / (_s + _c),
            moment(2, 0),
            "chi2_size_bias twice: s^2 p_k = k (k+2) p_{k+4}",
        ),
    }
    for j in (1, 2):
        lemmas[f"chi2_resolvent_power{j}"] = RadialLemma(
            f"chi2_resolvent_power{j}",
            _s**j / (_s + _c) ** (j + 1),
            moment(j, j),
            f"size bias ({j}x), then (-1)^{j}/{j}! d^{j}/dc^{j} of chi2_resolvent (dP_nu/dz = P_nu - P_(nu-1))",
        )
    return lemmas


# ---------------------------------------------------------------------------------------------
# the derivation
# ---------------------------------------------------------------------------------------------
@dataclass
class EpsDerivation(Derivation):
    """Closed forms of the eps > 0 theory (issue 12) for one activation of the homogeneous family.

    ``quantities[name]``: SymPy expression in (B, epsilon, sigma_w2, gamma, mu) and the
    activation's parameters, to be evaluated at the fixed point mu = mu*; ``fixed_point_map`` is
    F(mu) (the fixed point solves ``fixed_point_equation``: mu = F(mu)); ``collapse_slope`` =
    lim_{mu -> 0+} F(mu)/mu; ``collapse_boundary`` = eps_c with slope = 1 (collapse for eps >= eps_c);
    ``collapsed`` = the mu -> 0+ limits of the eigenvalues (the collapsed phase);
    ``sphere`` = the eps = 0 sphere integrals a_1, b_1, Q_X, T_X, K_{X,k} in closed form.
    """

    fixed_point_map: Any = None
    fixed_point_equation: Any = None
    collapse_slope: Any = None
    collapse_boundary: Any = None
    collapsed: dict = field(default_factory=dict)
    sphere: dict = field(default_factory=dict)
    radial: dict = field(default_factory=dict)

    def latex(self) -> str:
        """The standalone document of :meth:`Derivation.latex`, displayed with the abbreviations of
        :func:`display_form` (defined in an extra notation paragraph) and every long equation broken
        into lines that fit the page (:func:`long_equation_latex`)."""
        import dataclasses

        from symbnmf.symbolic._derivation import NOTATION_LATEX, compact_latex

        def step(st: Step) -> Step:
            eq = st.equation
            if not isinstance(eq, sp.Eq):
                return st
            lhs, rhs = display_form(eq.lhs), display_form(eq.rhs)
            if lhs == sp.Symbol("depth_scale"):
                return Step(st.name, r"\xi = \frac{1}{\log \lambda^{\downarrow}_{G}}", st.justification)
            lhs_tex = compact_latex(lhs)
            return Step(st.name, long_equation_latex(lhs_tex, rhs, lhs_tex), st.justification)

        shown = dataclasses.replace(
            self,
            quantities={k: display_form(v) for k, v in self.quantities.items()},
            limits={k: tuple(display_form(e) for e in v) for k, v in self.limits.items()},
            steps={k: [step(st) for st in v] for k, v in self.steps.items()},
        )
        doc = Derivation.latex(shown)
        return doc.replace(NOTATION_LATEX, NOTATION_LATEX + "\n" + EPS_NOTATION_LATEX, 1)

    def _equation_latex(self, lhs: str, expr: sp.Expr, name: str) -> str:
        return long_equation_latex(lhs, expr, name)


def _break_terms(expr: sp.Expr, units: float) -> list[tuple[str, str]]:
    """(operator, LaTeX) tokens of ``expr`` none wider than ``units`` (operator "+", "-", or "" for
    a factor continuing a product). A term too wide for a line is written as its plain factors
    (over its denominator) times each sum factor in parentheses, a sum still too wide being broken
    between its terms the same way (recursively)."""
    from symbnmf.symbolic._derivation import compact_latex, latex_width

    terms = expr.as_ordered_terms() if isinstance(expr, sp.Add) else [expr]
    out: list[tuple[str, str]] = []
    for t in terms:
        sign = "-" if t.could_extract_minus_sign() else "+"
        a = -t if sign == "-" else t
        tex = compact_latex(a)
        num, den = sp.fraction(a)
        factors = sp.Mul.make_args(num)
        sums = [f for f in factors if isinstance(f, sp.Add)]
        if latex_width(tex) <= units or not sums:
            out.append((sign, tex))
            continue
        rest = sp.Mul(*[f for f in factors if not isinstance(f, sp.Add)]) / den
        toks: list[tuple[str, str]] = [] if rest == 1 else [("", compact_latex(rest))]
        for f in sums:
            ftex = compact_latex(f)
            if latex_width(ftex) + 2 <= units:
                toks.append(("", r"\left(" + ftex + r"\right)"))
                continue
            inner = _break_terms(f, units - 4)
            first_sign, first = inner[0]
            inner[0] = ("", r"\bigl(" + ("-" if first_sign == "-" else "") + first)
            inner[-1] = (inner[-1][0], inner[-1][1] + r" \bigr)")
            toks.extend(inner)
        # the sign of the term goes before its first token
        toks[0] = (sign, toks[0][1])
        out.extend(toks)
    return out


def _fill_lines(lhs: str, tokens: list[tuple[str, str]], units: float) -> str:
    """``lhs = tokens...`` as an ``aligned`` block, each line filled with tokens up to ``units``
    (a product continued on a new line gets an explicit times sign)."""
    from symbnmf.symbolic._derivation import latex_width

    first_sign, first = tokens[0]
    lines = [f"{lhs} &= " + ("-" if first_sign == "-" else "") + first]
    used = latex_width(lines[0])
    for sign, tex in tokens[1:]:
        wt = latex_width(tex) + 2
        if used + wt > units:
            lines.append(r"&\quad " + (sign or r"\times") + f" {tex}")
            used = 4 + wt
        else:
            lines[-1] += f" {sign} {tex}" if sign else f" {tex}"
            used += wt
    return r"\begin{aligned}" + " \\\\\n".join(lines) + r"\end{aligned}"


def long_equation_latex(lhs: str, expr: sp.Expr, name: str) -> str:
    """``lhs = expr`` as lines of a ``gather*`` environment none wider than the page: as
    :func:`symbnmf.symbolic._derivation.equation_latex` (a long fraction as N/D with the pieces
    displayed apart), but a term too wide for a line is broken inside (:func:`_break_terms`)
    instead of overflowing."""
    from symbnmf.symbolic._derivation import LINE_UNITS, compact_latex, latex_width

    flat = f"{lhs} = {compact_latex(expr)}"
    if latex_width(flat) <= LINE_UNITS:
        return flat
    num, den = sp.fraction(sp.factor_terms(expr)) if not isinstance(expr, sp.Add) else (expr, sp.S.One)
    if den == 1 or latex_width(compact_latex(den)) > LINE_UNITS - 6:
        return _fill_lines(lhs, _break_terms(expr, LINE_UNITS - 8), LINE_UNITS)
    n_sym, d_sym = rf"N_{{{name}}}", rf"D_{{{name}}}"
    parts = [rf"{lhs} = \frac{{{n_sym}}}{{{d_sym}}},"]
    for sym, e in ((n_sym, num), (d_sym, den)):
        tex = compact_latex(e)
        if latex_width(f"{sym} = {tex}") <= LINE_UNITS:
            parts.append(f"{sym} = {tex}")
        else:
            parts.append(_fill_lines(sym, _break_terms(e, LINE_UNITS - 8), LINE_UNITS))
    return " \\\\\n".join(parts)


#: Notation of the eps > 0 documents (after the eps = 0 notation it amends).
EPS_NOTATION_LATEX = r"""\paragraph{With $\epsilon > 0$.} This document keeps $\epsilon > 0$, the weight variance
$\sigma_w^2$ and the BN gain $\gamma > 0$ (at $\beta = 0$): $\mathrm{BN}(h) = t y$ with
$t^2 = \tau = \mu s/(\mu s + B\epsilon)$, $s \sim \chi^2_{B-1}$, and the results are functions of $\mu$, to be
evaluated at the fixed point $\mu = \mu^*$. $\mathcal{P}_\nu(z) = e^{z} E_\nu(z)$ is the scaled
generalised exponential integral; in the results $\mathcal{P}_{j}$ (a subscript $j$ that is a
number) abbreviates $\mathcal{P}_{B/2 + j}\bigl(\frac{B\epsilon}{2\mu}\bigr)$."""


def display_form(expr: Any) -> Any:
    """``expr`` for display only: P_{B/2 + j}(B eps/(2 mu)) as the symbol P_j and sigma_w2 as
    sigma_w^2 (the closed forms themselves are unchanged)."""
    if isinstance(expr, str) or not isinstance(expr, sp.Basic):
        return expr
    z = B * EPS / (2 * MU)

    def short(node: sp.Basic) -> sp.Basic:
        nu, arg = node.args
        j = sp.simplify(nu - B / 2)
        if sp.simplify(arg - z) == 0 and j.is_Number:
            return sp.Symbol(r"\mathcal{P}_{%s}" % sp.latex(j))
        return node

    e = expr.replace(lambda n: isinstance(n, expint_scaled), short)
    return e.subs(WEIGHT_VAR, sp.Symbol(r"\sigma_w^{2}"))


def in_family(act: Activation) -> bool:
    """True for piecewise-polynomial phi positive-homogeneous of degree 1 (identity, ReLU, leaky ReLU)."""
    try:
        return bool(act.has_closed_form and act.half_polynomial is not None and act.homogeneity == 1)
    except Exception:  # any failure of the structural tests means "not in the family"
        return False


def sphere_closed_forms(act: Activation) -> tuple[dict[str, sp.Expr], dict[str, sp.Expr], dict[str, sp.Expr]]:
    """(integrals, norm, trace): every eps = 0 sphere integral of :func:`eps_integrals` in closed form
    in B (Gaussian lemmas, :func:`symbnmf.symbolic._derive.integral_closed_form`)."""
    from symbnmf.symbolic._derive import integral_closed_form
    from symbnmf.symbolic._epsilon import eps_integrals
    from symbnmf.symbolic._gaussian import to_explicit

    ei = eps_integrals()
    out = {}
    for name, si in ei.integrals.items():
        poly = integral_closed_form(si, act.half_polynomial, act.free_parameters)
        out[name] = sp.simplify(to_explicit(poly.as_expr()))
    return out, dict(ei.norm), dict(ei.trace)


_MEMO: dict[str, EpsDerivation] = {}


def _derive_eps(act: Activation) -> EpsDerivation:
    from symbnmf import __version__

    sph, norm, trace = sphere_closed_forms(act)
    lem = radial_lemmas()
    k = B - 1
    c = B * EPS / MU
    rad = {name: lm.closed.subs({_k: k, _c: c}) for name, lm in lem.items()}
    m_tau = rad["chi2_size_bias"]  # E tau
    m_stau = rad["chi2_second_size_bias"]  # E s tau
    # E[B tau^j/(mu s + B eps)] = (B/mu) E[s^j/(s+c)^{j+1}]
    M = [B / MU * rad["chi2_resolvent"], B / MU * rad["chi2_resolvent_power1"], B / MU * rad["chi2_resolvent_power2"]]
    scale = WEIGHT_VAR * GAMMA**2
    mu0 = sp.simplify(sph["a"] - sph["b"])
    d = EpsDerivation(activation=act.label, phi=act.bound_expr, conventions=CONVENTIONS, version=__version__)
    d.sphere = sph
    d.radial = rad
    F = scale * mu0 * m_tau
    d.fixed_point_map = F
    d.fixed_point_equation = sp.Eq(MU, F)
    tau_s = sp.Symbol(r"\tau")
    common = [
        Step(
            "Activation",
            sp.Eq(sp.Function(r"\phi")(sp.Symbol("x")), act.bound_expr),
            "positive-homogeneous of degree 1 with its kink at 0; gamma > 0, beta = 0",
        ),
        Step(
            "Radial split",
            sp.Eq(tau_s, MU * _s / (MU * _s + B * EPS)),
            "Lemma eps_radial_split: BN(h) = t y, t^2 = tau, s = |z|^2 ~ chi^2_{B-1} independent of y",
        ),
        Step(
            "Separation",
            r"\phi(\gamma t y) = \gamma t\,\phi(y),\quad a(\tau)=\gamma^2\tau a_1,\ "
            r"Q_X(\tau)=\gamma^2\tau Q_X,\ K_{X,k}(\tau)=\gamma^2 K_{X,k}",
            "Lemma eps_separation: degree-1 homogeneity of phi (phi' is degree 0)",
        ),
        Step("Radial moments", sp.Eq(sp.Symbol("c"), c), "c = B eps/mu; lemmas chi2_* (derived from the density)"),
    ]
    d.steps["fixed_point"] = [
        *common,
        Step("Sphere integrals", sp.Eq(sp.Symbol(r"\mu_0"), mu0), "eps = 0 closed form a_1 - b_1 (Gaussian lemmas)"),
        Step("E tau", sp.Eq(sp.Symbol(r"\mathbb{E}\tau"), m_tau), "chi2_size_bias with k = B - 1"),
        Step(
            "Fixed-point equation",
            d.fixed_point_equation,
            "mu = sigma_w^2 E_s[a - b](tau); the root mu* is transcendental (numeric root of a closed-form map)",
        ),
    ]
    q: dict[str, sp.Expr] = {}
    q["fixed_point.diag"] = scale * sph["a"] * m_tau
    q["fixed_point.offdiag"] = scale * sph["b"] * m_tau
    for X in "GLM":
        q[f"forward.{X}"] = scale / (2 * MU * norm[X]) * (sph[f"Q.{X}"] * m_stau / B - trace[X] * sph[f"T.{X}"] * m_tau)
        q[f"backward.{X}"] = scale / norm[X] * sum(sph[f"K.{X}.{j}"] * M[j] for j in range(3))
    q["depth_scale"] = 1 / sp.log(q["backward.G"])
    for name in QUANTITIES:
        steps = list(common)
        if name.startswith("forward"):
            steps.append(
                Step(
                    "Definition",
                    r"\lambda^{\uparrow}_X=\frac{\sigma_w^2}{2\mu\|\Delta\|^2}\mathbb{E}_s\Big[\frac{s}{B}Q_X(\tau)"
                    r"-\operatorname{tr}\Delta\,T_X(\tau)\Big]",
                    "Gaussian score at Sigma = mu G (symbolic/_epsilon.py)",
                )
            )
            steps.append(Step("E s tau", sp.Eq(sp.Symbol(r"\mathbb{E}s\tau"), m_stau), "chi2_second_size_bias"))
        elif name.startswith("backward"):
            steps.append(
                Step(
                    "Definition",
                    r"\lambda^{\downarrow}_X=\frac{\sigma_w^2}{\|\Delta\|^2}\mathbb{E}_s\Big[\frac{B}{\mu s+B\epsilon}"
                    r"\sum_k\tau^k K_{X,k}(\tau)\Big]",
                    "BN Jacobian with eps (symbolic/_epsilon.py)",
                )
            )
            for j in range(3):
                steps.append(
                    Step(
                        f"Radial moment j={j}",
                        sp.Eq(sp.Symbol(r"\mathbb{E}\frac{B\tau^{%d}}{\mu s+B\epsilon}" % j), M[j]),
                        "chi2_resolvent" + ("" if j == 0 else f"_power{j}"),
                    )
                )
        steps.append(Step("Result", sp.Eq(sp.Symbol(name.replace(".", "_")), q[name]), "at mu = mu*"))
        d.steps[name] = steps
    d.quantities = q
    # collapse: F(mu)/mu = scale mu0 E[s/(mu s + B eps)] -> scale mu0 E[s]/(B eps) as mu -> 0+ (monotone convergence)
    Es = sp.simplify(sp.integrate(_s * chi2_density(_k), (_s, 0, sp.oo), conds="none").subs(_k, k))
    d.collapse_slope = sp.simplify(scale * mu0 * Es / (B * EPS))
    (eps_c,) = sp.solve(sp.Eq(d.collapse_slope, 1), EPS)
    d.collapse_boundary = sp.simplify(eps_c)
    d.steps["collapse"] = [
        *common,
        Step(
            "Slope at 0",
            sp.Eq(sp.Symbol(r"\lim_{\mu\to0^+}F(\mu)/\mu"), d.collapse_slope),
            "F(mu)/mu = sigma_w^2 gamma^2 mu_0 E[s/(mu s + B eps)], monotone in mu; E s = k from the density",
        ),
        Step(
            "Boundary",
            sp.Eq(sp.Symbol(r"\epsilon_c"), d.collapse_boundary),
            "BSB1 phase (mu* > 0) iff eps < eps_c; collapsed (mu* = 0) otherwise",
        ),
    ]
    # collapsed phase: mu -> 0+ limits, limits taken inside E_s (dominated convergence):
    # E s tau/mu -> E s^2/(B eps), E tau/mu -> E s/(B eps), E[B tau^j/(mu s + B eps)] -> delta_{j0}/eps
    Es2 = sp.simplify(sp.integrate(_s**2 * chi2_density(_k), (_s, 0, sp.oo), conds="none").subs(_k, k))
    for X in "GLM":
        d.collapsed[f"forward.{X}"] = sp.simplify(
            scale / (2 * norm[X]) * (sph[f"Q.{X}"] * Es2 / (B * B * EPS) - trace[X] * sph[f"T.{X}"] * Es / (B * EPS))
        )
        d.collapsed[f"backward.{X}"] = sp.simplify(scale * sph[f"K.{X}.0"] / (norm[X] * EPS))
    return d


def derive_eps(activation: str | Activation) -> EpsDerivation:
    """Closed forms of the eps > 0 mean field theory (issue 12) for identity, ReLU, leaky ReLU.

    Convention: h = W x + b, W ~ N(0, sigma_w^2/N), BN with the biased variance and eps > 0,
    x = phi(gamma BN(h)) with gamma > 0, beta = 0 (sigma_b^2 drops out). Every quantity of
    :data:`symbnmf.QUANTITIES` is a closed form in (B, epsilon, sigma_w2, gamma, mu) through
    P_nu(z) = e^z E_nu(z) (:class:`expint_scaled`), evaluated at the root mu* of
    ``fixed_point_equation`` (mu = F(mu)); see :class:`EpsDerivation`. At eps -> 0 each reduces to
    :func:`symbnmf.derive`'s closed form (tested symbolically).

    Raises :class:`~symbnmf.NoClosedFormError` outside the family (use
    :func:`symbnmf.evaluate_eps`, the mpmath path).
    """
    act = get_activation(activation)
    act.require_nondegenerate()
    if not in_family(act):
        raise NoClosedFormError(
            f"activation {act.label!r} has no eps > 0 closed form (only degree-1 positive-homogeneous phi: identity, "
            "relu, leaky_relu); use the mpmath path: `symbnmf eval ACT -B B --eps E --method quadrature`"
        )
    from symbnmf.symbolic._derive import _activation_key

    key = _activation_key(act)
    if key not in _MEMO:
        _MEMO[key] = _derive_eps(act)
    return _MEMO[key]
