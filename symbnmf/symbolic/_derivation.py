"""Derivation objects: ordered steps (name, equation, justification) that print to LaTeX.

A :class:`Derivation` collects, per quantity, the steps that lead from the definition to the
closed form, plus the closed forms themselves (SymPy ``Expr`` in ``B``), their B -> infinity
limits and first 1/B corrections. ``latex()`` gives a standalone document; ``_repr_latex_``
shows the results in Jupyter; ``to_json()`` is what ``derivations/*.py`` and ``symbnmf derive
--json`` write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import sympy as sp


@dataclass(frozen=True)
class Step:
    """One step: ``name``, an equation (SymPy object or LaTeX string) and a one-line
    ``justification`` citing the theorem or lemma it uses."""

    name: str
    equation: Any
    justification: str

    @property
    def latex(self) -> str:
        return compact_latex(self.equation)

    def to_json(self) -> dict:
        return {"name": self.name, "latex": self.latex, "justification": self.justification}


_LATEX_ESCAPES = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
    "|": r"\textbar{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def abbreviate(expr: Any, *, latex: bool = False) -> Any:
    """``expr`` with theta_B = arccos(1/(B-1)) and S_B = sqrt(B) sqrt(B-2) written as symbols
    (for display only: the closed forms themselves stay explicit in B)."""
    from symbnmf.symbolic._algebra import B

    theta, S = sp.Symbol(r"\theta_B" if latex else "theta_B"), sp.Symbol("S_B")
    e = expr.subs(sp.acos(1 / (B - 1)), theta)
    return e.subs(sp.sqrt(B) * sp.sqrt(B - 2), S).subs(B ** sp.Rational(3, 2) * (B - 2) ** sp.Rational(3, 2), S**3)


def compact_latex(expr: Any) -> str:
    """LaTeX with theta_B = arccos(1/(B-1)) and S_B = sqrt(B(B-2)) written as symbols."""
    if isinstance(expr, str):
        return expr
    return sp.latex(abbreviate(expr, latex=True))


#: Width budget of one displayed line, in :func:`latex_width` units (about 5.5 pt each; the
#: document's text block is 16 cm = 455 pt wide, see :meth:`Derivation.latex`).
LINE_UNITS = 62

_ZERO_WIDTH = {r"\left", r"\right", r"\bigl", r"\bigr", r"\big", r"\Bigl", r"\Bigr", r"\,", r"\!", r"\displaystyle"}
_TEXT_ARG = {r"\operatorname", r"\mathrm", r"\text", r"\mathbb", r"\mathbf", r"\texttt", r"\textbf"}


def _group(s: str, i: int) -> tuple[str, int]:
    """The brace group (or single token) starting at ``s[i]``, and the index after it."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return "", i
    if s[i] == "{":
        depth = 0
        for j in range(i, len(s)):
            depth += {"{": 1, "}": -1}.get(s[j], 0)
            if depth == 0:
                return s[i + 1 : j], j + 1
        return s[i + 1 :], len(s)
    if s[i] == "\\":
        j = i + 1
        while j < len(s) and s[j].isalpha():
            j += 1
        return s[i : max(j, i + 2)], max(j, i + 2)
    return s[i], i + 1


def latex_width(s: str) -> float:
    """Rough printed width of a math-mode LaTeX string, in units of about one letter.

    Fractions count their wider part, scripts 0.7 of their content, ``\\left``/``\\right`` and
    braces nothing, binary operators and relations 2 (their spacing). Used only to decide where
    to break a displayed formula; the compile test checks the result with pdflatex.
    """
    w, i = 0.0, 0
    while i < len(s):
        ch = s[i]
        if ch == "\\":
            tok, i = _group(s, i)
            if tok == r"\frac" or tok == r"\tfrac":
                a, i = _group(s, i)
                b, i = _group(s, i)
                w += max(latex_width(a), latex_width(b)) * (0.75 if tok == r"\tfrac" else 1) + 0.5
            elif tok == r"\sqrt":
                a, i = _group(s, i)
                w += latex_width(a) + 1.5
            elif tok in _TEXT_ARG:
                a, i = _group(s, i)
                w += len(a) * (0.7 if tok == r"\text" else 1.0)
            elif tok in _ZERO_WIDTH:
                pass
            elif tok in (r"\quad",):
                w += 2
            elif tok in (r"\qquad",):
                w += 4
            elif tok in (r"\cdot", r"\to", r"\le", r"\ge", r"\mid", r"\approx"):
                w += 2
            else:
                w += 1
        elif ch in "^_":
            a, i = _group(s, i + 1)
            w += 0.7 * latex_width(a)
        elif ch in "{} &":
            i += 1
        elif ch in "+-=<>":
            w += 2
            i += 1
        else:
            w += 1
            i += 1
    return w


def _signed_terms(expr: sp.Expr) -> list[tuple[str, str]]:
    """(sign, LaTeX of |term|) for the terms of a sum, in SymPy's print order."""
    terms = sp.Add.make_args(expr) if isinstance(expr, sp.Add) else (expr,)
    if isinstance(expr, sp.Add):
        terms = expr.as_ordered_terms()
    out = []
    for t in terms:
        if t.could_extract_minus_sign():
            out.append(("-", compact_latex(-t)))
        else:
            out.append(("+", compact_latex(t)))
    return out


def break_sum(lhs: str, terms: list[tuple[str, str]], *, units: float = LINE_UNITS, rel: str = "=") -> str:
    """``lhs rel t1 ± t2 ± ...`` as an ``aligned`` block, one line filled with terms at a time.

    ``terms`` are (sign, LaTeX) pairs; a single term wider than a line gets a line of its own.
    """
    if not terms:
        return f"{lhs} {rel} 0"
    first_sign, first = terms[0]
    head = f"{lhs} {rel} " + ("-" if first_sign == "-" else "") + first
    if latex_width(head) + sum(latex_width(t) + 2 for _, t in terms[1:]) <= units:
        return head + "".join(f" {s} {t}" for s, t in terms[1:])
    lines: list[str] = [f"{lhs} &{rel} " + ("-" if first_sign == "-" else "") + first]
    used = latex_width(lines[0])
    for s, t in terms[1:]:
        wt = latex_width(t) + 2
        if used + wt > units:
            lines.append(rf"&\quad {s} {t}")
            used = 4 + wt
        else:
            lines[-1] += f" {s} {t}"
            used += wt
    return r"\begin{aligned}" + " \\\\\n".join(lines) + r"\end{aligned}"


def equation_latex(lhs: str, expr: sp.Expr, *, name: str = "", units: float = LINE_UNITS) -> str:
    """``lhs = expr`` as lines of a ``gather*`` environment, none wider than ``units``.

    A sum is broken between its terms; a fraction too wide for a line is written as ``N/D`` with
    the numerator N_name and denominator D_name displayed (and broken) as named pieces.
    """
    flat = f"{lhs} = {compact_latex(expr)}"
    if latex_width(flat) <= units:
        return flat
    num, den = sp.fraction(sp.factor_terms(expr)) if not isinstance(expr, sp.Add) else (expr, sp.S.One)
    if den == 1:
        return break_sum(lhs, _signed_terms(expr), units=units)
    n_sym, d_sym = rf"N_{{{name}}}" if name else "N", rf"D_{{{name}}}" if name else "D"
    parts = [rf"{lhs} = \frac{{{n_sym}}}{{{d_sym}}},", _piece(n_sym, num, units), _piece(d_sym, den, units)]
    return " \\\\\n".join(parts)  # lines of a gather* environment (may break across pages)


def _piece(sym: str, expr: sp.Expr, units: float) -> str:
    """``sym = expr``, broken between the terms of the sum inside ``expr`` when too wide."""
    flat = compact_latex(expr)
    if latex_width(flat) <= units - 6:
        return f"{sym} = {flat}"
    if isinstance(expr, sp.Add):
        return break_sum(sym, _signed_terms(expr), units=units)
    if isinstance(expr, sp.Mul):
        sums = [f for f in expr.args if isinstance(f, sp.Add)]
        if sums:
            big = max(sums, key=lambda f: latex_width(compact_latex(f)))
            rest = sp.Mul(*[f for f in expr.args if f is not big])
            terms = _signed_terms(big)
            prefix = "" if rest == 1 else compact_latex(rest) + r" \bigl("
            sign, first = terms[0]
            if prefix:
                terms[0] = ("+", prefix + ("-" if sign == "-" else "") + first)
                terms[-1] = (terms[-1][0], terms[-1][1] + r" \bigr)")
            return break_sum(sym, terms, units=units)
    return f"{sym} = {flat}"


def _coordinate_factors(mono: sp.Expr, j: int, *, gaussian: bool = False) -> list[str]:
    """LaTeX factors of a coordinate function: PHI -> phi(y_j), DPHI -> phi'(y_j), U -> y_j."""
    from symbnmf.symbolic._sphere import DPHI, PHI, U

    v = f"x_{j}" if gaussian else f"y_{j}"
    out = []
    for sym, base in ((PHI, rf"\phi({v})"), (DPHI, rf"\phi'({v})"), (U, v)):
        k = sp.degree(mono, sym) if mono.has(sym) else 0
        if k:
            out.append(base if k == 1 else f"{base}^{{{k}}}")
    return out


def expectation_latex(f1: sp.Expr, f2: sp.Expr = sp.S.One) -> str:
    """E[f1(y_1) f2(y_2)] with f1, f2 monomials in phi, phi', u: phi(y_1) phi(y_2) and phi(y_1)^2
    print differently."""
    inner = " ".join(_coordinate_factors(f1, 1) + (_coordinate_factors(f2, 2) if f2 != 1 else []))
    return rf"\mathbb{{E}}\bigl[{inner or '1'}\bigr]"


def monomial_latex(key: tuple, *, gaussian: bool = False) -> str:
    """E[v_1^p H(v_1)^e1 v_2^q H(v_2)^e2] for ``key = (p, e1, q, e2)`` or ``(p, e1)``; v = y
    (the BN sphere) or x (a standard Gaussian pair)."""
    v = "x" if gaussian else "y"
    parts = []
    for j, (k, e) in enumerate(zip(key[::2], key[1::2]), start=1):
        if k:
            parts.append(f"{v}_{j}" if k == 1 else f"{v}_{j}^{{{k}}}")
        if e:
            parts.append(f"H({v}_{j})")
    return rf"\mathbb{{E}}\bigl[{' '.join(parts) or '1'}\bigr]"


def _coefficient_term(c: sp.Expr, body: str) -> tuple[str, str]:
    """(sign, LaTeX of |c| * body), parenthesising a sum coefficient."""
    sign = "-" if c.could_extract_minus_sign() else "+"
    a = -c if sign == "-" else c
    if a == 1:
        return sign, body
    cl = compact_latex(a)
    if isinstance(a, sp.Add):
        cl = rf"\left({cl}\right)"
    return sign, f"{cl}\\,{body}"


def sphere_sum_latex(lhs: str, terms: Any, *, units: float = LINE_UNITS) -> str:
    """``lhs = sum_c coeff_c E[f1_c(y_1) f2_c(y_2)]``, broken between terms."""
    return break_sum(lhs, [_coefficient_term(c, expectation_latex(f1, f2)) for c, f1, f2 in terms], units=units)


def monomial_sum_latex(lhs: str, terms: Any, *, units: float = LINE_UNITS) -> str:
    """``lhs = sum coeff * E[monomial]`` for ``(coeff, key)`` pairs, broken between terms."""
    return break_sum(lhs, [_coefficient_term(c, monomial_latex(k)) for c, k in terms], units=units)


#: Every symbol the derivation documents use, defined once (tests check that none is missing).
NOTATION_LATEX = r"""Network: $h^l = W^l x^{l-1} + b^l$, $x^l = \phi(\mathrm{BN}(h^l))$ with
$W_{ij} \sim N(0, \sigma_w^2/N)$, $b_i \sim N(0, \sigma_b^2)$, width $N \to \infty$, batch size
$B \ge 4$. Batch normalization acts per unit across the batch:
$\mathrm{BN}(h) = n(G h)$, $G = I - \mathbf{1}\mathbf{1}^\top/B$, $n(v) = \sqrt{B}\, v/\|v\|$
(biased variance, $\epsilon = 0$, $\gamma = 1$, $\beta = 0$; BN's $\gamma, \beta$ are absorbed
into $\phi$). BN removes scale and shift, so $\sigma_w^2$ and $\sigma_b^2$ drop out; symbnmf
reports $\sigma_w^2 = 1$, $\sigma_b^2 = 0$.
\begin{itemize}
\item $y$: uniform on the sphere of radius $\sqrt{B}$ in $\mathbf{1}^\perp \subset \mathbb{R}^B$
  (the law of $\mathrm{BN}(h)$ at the fixed point); $y_1, y_2$: two distinct coordinates of $y$.
\item $\phi$: the activation, $\phi'$ its derivative; $\phi = p + H q$ with $p, q$ polynomials and
  $H$ the Heaviside step ($H(u) = 1$ for $u > 0$, else 0).
\item $\theta_B = \arccos\frac{1}{B-1}$, $S_B = \sqrt{B(B-2)}$ (so $S_B^2 = B(B-2)$).
\item $\Sigma^*$: the BSB1 fixed point of the covariance recursion, $\Sigma^*_{ii} = I_d$,
  $\Sigma^*_{ij} = I_o$ ($i \ne j$); $\mu^* = \Sigma^*_{ii} - \Sigma^*_{ij}$, so
  $G\Sigma^* G = \mu^* G$; $N_{\mu}$, $D_{\mu}$: numerator and denominator of $\mu^*$.
\item $V(\Sigma) = \mathbb{E}[\phi(\mathrm{BN}(h))\phi(\mathrm{BN}(h))^\top]$, $h \sim N(0, \Sigma)$;
  $\mathrm{d}V_G[\Delta]$, $\mathrm{d}V[\Delta]$: its derivative at $\Sigma = G$ in direction $\Delta$.
\item Pieces of the symmetric matrices on $\mathbf{1}^\perp$: $G$ (the span of $G$), $L$
  ($G D G$ with $D$ diagonal, trace 0) and $M$ (zero diagonal). $\Delta$: a fixed test matrix in
  one piece, $\langle A, B\rangle = \operatorname{tr}(A^\top B)$, $\|\Delta\|^2 = \langle\Delta,\Delta\rangle$.
\item $\lambda^{\uparrow}_{X}$: eigenvalue on piece $X$ of $\Sigma \mapsto G V(\Sigma) G/\mu^*$
  at $\Sigma = G$ (forward); $\lambda^{\downarrow}_{X}$: eigenvalue of the gradient map
  $\Pi \mapsto \mathbb{E}[J^\top \Pi J]$ at $\Sigma^*$ (backward), with $J = \partial\,\phi(\mathrm{BN}(h))/\partial h
  = \frac{\sqrt{B}}{\|Gh\|} D P$, $D = \operatorname{diag}\phi'(y)$, $P = G - y y^\top/B$;
  $\xi = 1/\log\lambda^{\downarrow}_{G}$: the depth scale.
\item $I_S$: the sphere integral of the quantity being derived, $I_S = \langle\Delta,
  \mathrm{d}V[\Delta]\rangle$-type sum written out in its first step; $I_d$, $I_o$: the fixed-point
  integrals above. $N_X$, $D_X$: numerator and denominator of a long result $X$, displayed apart.
\item $\mathbb{E}[\cdot]$: expectation over $y$ (or over $x$, $z$ where they appear);
  $z \sim N(0, G)$ in $\mathbb{R}^B$; $K$: degree of homogeneity; $\chi^2_k$: chi-square law
  with $k$ degrees of freedom.
\item $x_1, x_2$: standard normal with correlation $\rho = \cos\psi$, $s = \sin\psi =
  \sqrt{1-\rho^2}$, $w$ standard normal independent of $x_1$; on the BN sphere
  $\rho = -\frac{1}{B-1}$, $s = \frac{S_B}{B-1}$, $\psi = \pi - \theta_B$. $m_k$, $M_k$:
  names for long standard and sphere moments. $p, q, k$: exponents; $t$: an angle.
\item Lemma notation: $n$ named and $m$ distinct further indices, $(a)_m = a(a-1)\cdots(a-m+1)$;
  $g$: a Gaussian vector, $v$: uniform on a sphere of radius $\rho$ in $d$ dimensions;
  $c$: index of a remaining coordinate.
\item Large batch: $q = q_\infty + c_1/B + O(B^{-2})$ for each quantity $q$.
\end{itemize}"""


def latex_text(s: str) -> str:
    """Escape plain text for LaTeX."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in s)


QUANTITY_SYMBOLS = {
    "fixed_point.diag": r"\Sigma^*_{ii}",
    "fixed_point.offdiag": r"\Sigma^*_{ij}",
    "forward.G": r"\lambda^{\uparrow}_{G}",
    "forward.L": r"\lambda^{\uparrow}_{L}",
    "forward.M": r"\lambda^{\uparrow}_{M}",
    "backward.G": r"\lambda^{\downarrow}_{G}",
    "backward.L": r"\lambda^{\downarrow}_{L}",
    "backward.M": r"\lambda^{\downarrow}_{M}",
    "depth_scale": r"\xi",
}


@dataclass
class Derivation:
    """Closed forms of every mean-field quantity of one activation, with the steps behind them.

    * ``quantities[name]``: SymPy expression in ``B`` (and free activation parameters);
    * ``steps[name]``: list of :class:`Step`;
    * ``limits[name]``: ``(q_inf, c1)`` with ``q = q_inf + c1/B + O(1/B^2)``;
    * ``activation``: the activation's label; ``phi``: its expression.
    """

    activation: str
    phi: sp.Expr
    quantities: dict = field(default_factory=dict)
    steps: dict = field(default_factory=dict)
    limits: dict = field(default_factory=dict)
    conventions: str = ""
    version: str = ""

    def __getitem__(self, name: str) -> sp.Expr:
        return self.quantities[name]

    def latex(self) -> str:
        """A standalone LaTeX document (article class, amsmath, geometry: all in texlive-latex-base)
        with the notation, the lemmas, every step and the results; no line runs off the page."""
        from symbnmf.symbolic._gaussian import LEMMAS

        lines = [
            r"\documentclass{article}",
            r"\usepackage[a4paper,margin=2.5cm]{geometry}",
            r"\usepackage{amsmath,amssymb}",
            r"\allowdisplaybreaks",
            r"\begin{document}",
            r"\sloppy",
            r"\section*{Mean field theory of batch normalization: %s}" % latex_text(self.activation),
            r"Activation $\phi(x) = %s$. Generated by symbnmf %s from the definitions below; every"
            % (sp.latex(self.phi), latex_text(self.version)),
            r"closed form is checked against independent quadrature (\texttt{symbnmf check}).",
            r"\subsection*{Conventions and notation}",
            NOTATION_LATEX,
            r"\subsection*{Lemmas}",
            r"\begin{enumerate}",
        ]
        for lem in LEMMAS.values():
            lines.append(r"\item \textbf{%s.} %s" % (latex_text(lem.name), latex_text(lem.proof)))
            lines.append(r"\[ %s \]" % lem.latex())
        lines.append(r"\end{enumerate}")
        lines.append(r"\subsection*{Results}")
        for name, expr in self.quantities.items():
            sym = QUANTITY_SYMBOLS.get(name, name)
            if name == "depth_scale" and latex_width(compact_latex(expr)) > LINE_UNITS:
                body = r"\xi = \frac{1}{\log \lambda^{\downarrow}_{G}}"
            else:
                body = self._equation_latex(sym, expr, sym)
            lines += [r"\begin{gather*}", body, r"\end{gather*}"]
        if self.limits:
            lines.append(r"\subsection*{Large batch: $q = q_\infty + c_1/B + O(B^{-2})$}")
            lines.append(r"\begin{gather*}")
            rows = []
            for name, (q0, c1) in self.limits.items():
                sym = QUANTITY_SYMBOLS.get(name, name)
                one = r"%s \to %s, \qquad c_1 = %s" % (sym, compact_latex(q0), compact_latex(c1))
                if latex_width(one) > LINE_UNITS:
                    one = r"%s \to %s, \\ %s" % (sym, compact_latex(q0), self._equation_latex("c_1", c1, sym))
                rows.append(one)
            lines.append(" \\\\\n".join(rows))
            lines.append(r"\end{gather*}")
        for name, steps in self.steps.items():
            lines.append(
                r"\subsection*{Derivation of $%s$ (\texttt{%s})}" % (QUANTITY_SYMBOLS.get(name, name), latex_text(name))
            )
            lines.append(r"\begin{enumerate}")
            for st in steps:
                lines.append(r"\item \textbf{%s} (%s)" % (latex_text(st.name), latex_text(st.justification)))
                lines += [r"\begin{gather*}", st.latex, r"\end{gather*}"]
            lines.append(r"\end{enumerate}")
        lines.append(r"\end{document}")
        return "\n".join(lines) + "\n"

    def _equation_latex(self, lhs: str, expr: sp.Expr, name: str) -> str:
        """A displayed result ``lhs = expr`` (:func:`equation_latex`; subclasses break differently)."""
        return equation_latex(lhs, expr, name=name)

    def _repr_latex_(self) -> str:
        rows = [r"%s &= %s" % (QUANTITY_SYMBOLS.get(n, n), compact_latex(e)) for n, e in self.quantities.items()]
        rows.append(r"&\text{with } \theta_B = \arccos\tfrac{1}{B-1},\ S_B = \sqrt{B(B-2)}")
        return r"$\begin{aligned}" + r"\\".join(rows) + r"\end{aligned}$"

    def to_json(self) -> dict:
        return {
            "activation": self.activation,
            "phi": str(self.phi),
            "phi_srepr": sp.srepr(self.phi),
            "phi_latex": sp.latex(self.phi),
            "conventions": self.conventions,
            "version": self.version,
            "quantities": {
                n: {"sympy": sp.sstr(e), "srepr": sp.srepr(e), "latex": sp.latex(e)} for n, e in self.quantities.items()
            },
            "limits": {
                n: {
                    "B_to_infinity": sp.sstr(a),
                    "first_order_1_over_B": sp.sstr(b),
                    "srepr": [sp.srepr(a), sp.srepr(b)],
                    "latex": [sp.latex(a), sp.latex(b)],
                }
                for n, (a, b) in self.limits.items()
            },
            "steps": {n: [s.to_json() for s in st] for n, st in self.steps.items()},
        }

    @staticmethod
    def from_json(data: dict) -> Derivation:
        """Inverse of :meth:`to_json`. Expressions are rebuilt from their ``srepr`` fields by
        :func:`~symbnmf.symbolic._serialize.read_srepr`, which never evaluates text; a malformed or
        hostile document raises :class:`~symbnmf.symbolic._serialize.UnsafeExpressionError`."""
        from symbnmf.symbolic._serialize import UnsafeExpressionError, read_srepr

        def text(v: Any) -> str:
            if not isinstance(v, str):
                raise UnsafeExpressionError(f"expected a string in the derivation document, got {type(v).__name__}")
            return v

        def mapping(v: Any) -> dict:
            if not isinstance(v, dict):
                raise UnsafeExpressionError("malformed derivation document")
            return v

        data = mapping(data)
        d = Derivation(
            activation=text(data["activation"]),
            phi=read_srepr(text(data["phi_srepr"])),
            conventions=text(data.get("conventions", "")),
            version=text(data.get("version", "")),
        )
        d.quantities = {text(n): read_srepr(text(mapping(v)["srepr"])) for n, v in mapping(data["quantities"]).items()}
        limits = {}
        for n, v in mapping(data.get("limits", {})).items():
            pair = mapping(v)["srepr"]
            if not isinstance(pair, list) or len(pair) != 2:
                raise UnsafeExpressionError("malformed limits in derivation document")
            limits[text(n)] = (read_srepr(text(pair[0])), read_srepr(text(pair[1])))
        d.limits = limits
        d.steps = {
            text(n): [Step(text(s["name"]), text(s["latex"]), text(s["justification"])) for s in st]
            for n, st in mapping(data.get("steps", {})).items()
        }
        return d

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)
