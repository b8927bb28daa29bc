"""Table-driven printer from SymPy expressions to JAX (or NumPy) source code.

It closes the known gaps of SymPy's ``JaxPrinter`` / ``lambdify(modules="jax")`` (docs/theory.md):

* ``erf``, ``erfc``, ``gamma``, ``loggamma`` go through ``jax.scipy.special`` (SymPy prints
  ``math.erf``, which fails on tracers under ``jit``);
* ``Float`` constants are printed with Python's shortest round-trip ``repr`` of the correctly
  rounded double (SymPy prints 15 digits, which does not round-trip float64);
* rationals stay exact: ``p/q`` is printed with integer literals and the denominator divides the
  product once (``x/3``, never ``0.333333333333333*x``);
* ``Piecewise`` becomes nested ``where``; ``Min``/``Max`` become ``minimum``/``maximum``;
* common subexpressions are shared (:func:`sympy.cse`, in :func:`print_assignments`);
* integer powers are multiplications (``x**3`` -> ``x*x*x``), half-integer powers use ``sqrt``;
* ``log(x)`` becomes ``log1p(x - 1)`` with ``x - 1`` cancelled symbolically when that is no more
  complex (so ``1/log((B-2)/(B-3))`` stays accurate for large B).

Every constant is a Python literal (a *weakly typed* scalar for JAX), so the printed code keeps
the dtype of its array inputs: float32 in, float32 out; float64 when x64 is enabled.

Like SymPy's own printers the mapping is a table (:data:`KNOWN_FUNCTIONS`,
:data:`KNOWN_CONSTANTS`); a new target is a new :class:`Target`, not a new printer.
JAX itself is imported only by :func:`jax_callable` (the symbolic layers stay JAX-free).
"""

from __future__ import annotations

import functools
import keyword
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sympy as sp
from sympy.printing.precedence import PRECEDENCE, precedence

from symbnmf._errors import SymbnmfError
from symbnmf.fast import _specfun
from symbnmf.fast._specfun import HELPERS
from symbnmf.fast._specfun import helper_sources as helper_sources


class CodegenError(SymbnmfError):
    """An expression that cannot be printed as array code (the message names the fix)."""


@dataclass(frozen=True)
class Target:
    """A code-generation target: module aliases and the import lines they need."""

    name: str
    array: str  # alias of the array namespace (jnp / np)
    special: str  # alias of the special-function namespace
    array_import: str
    special_import: str


TARGETS: dict[str, Target] = {
    "jax": Target("jax", "jnp", "jsp", "import jax.numpy as jnp", "import jax.scipy.special as jsp"),
    "numpy": Target("numpy", "np", "_sps", "import numpy as np", "import scipy.special as _sps"),
}

#: SymPy function name -> (namespace, name): "array" is jnp/np, "special" jax.scipy.special/scipy.special.
KNOWN_FUNCTIONS: dict[str, tuple[str, str]] = {
    "exp": ("array", "exp"),
    "log": ("array", "log"),
    "log1p": ("array", "log1p"),
    "expm1": ("array", "expm1"),
    "sqrt": ("array", "sqrt"),
    "cbrt": ("array", "cbrt"),
    "sin": ("array", "sin"),
    "cos": ("array", "cos"),
    "tan": ("array", "tan"),
    "asin": ("array", "arcsin"),
    "acos": ("array", "arccos"),
    "atan": ("array", "arctan"),
    "atan2": ("array", "arctan2"),
    "sinh": ("array", "sinh"),
    "cosh": ("array", "cosh"),
    "tanh": ("array", "tanh"),
    "asinh": ("array", "arcsinh"),
    "acosh": ("array", "arccosh"),
    "atanh": ("array", "arctanh"),
    "Abs": ("array", "abs"),
    "sign": ("array", "sign"),
    "floor": ("array", "floor"),
    "ceiling": ("array", "ceil"),
    "erf": ("special", "erf"),
    "erfc": ("special", "erfc"),
    "gamma": ("special", "gamma"),
    "loggamma": ("special", "gammaln"),
    "Min": ("array", "minimum"),
    "Max": ("array", "maximum"),
}

#: SymPy constants -> Python float literals (correctly rounded doubles, shortest round-trip repr).
KNOWN_CONSTANTS: dict[str, str] = {
    name: repr(float(sp.N(c, 40)))
    for name, c in {
        "pi": sp.pi,
        "E": sp.E,
        "EulerGamma": sp.EulerGamma,
        "Catalan": sp.Catalan,
        "GoldenRatio": sp.GoldenRatio,
    }.items()
}

#: Integer powers up to this exponent are unrolled into multiplications.
MAX_UNROLL = 8
_INT_LIMIT = 2**31 - 1  # larger integer literals would overflow JAX's int32 weak types

_P_ATOM = PRECEDENCE["Atom"]
_P_POW = PRECEDENCE["Pow"]
_P_MUL = PRECEDENCE["Mul"]
_P_ADD = PRECEDENCE["Add"]
_P_REL = PRECEDENCE["Relational"]
_P_FUNC = PRECEDENCE["Func"]


def _float_literal(value: Any) -> str:
    f = float(value)
    if f != f:
        return "{a}.nan"
    if f in (float("inf"), float("-inf")):
        return ("-" if f < 0 else "") + "{a}.inf"
    return repr(f)


class ArrayPrinter:
    """Print SymPy expressions as expressions of the target's array namespace.

    * ``target``: ``"jax"`` (``jnp``, ``jsp`` = ``jax.scipy.special``) or ``"numpy"``.
    * ``names``: symbol -> Python identifier (default: the symbol's own name).
    """

    def __init__(self, target: str = "jax", names: Mapping[sp.Symbol, str] | None = None) -> None:
        if target not in TARGETS:
            raise CodegenError(f"unknown code-generation target {target!r}; use one of {', '.join(TARGETS)}")
        self.target = TARGETS[target]
        self.names = dict(names or {})
        self.used_special = False
        self.used_helpers: set[str] = set()  # names of HELPERS whose source the code needs

    # -- entry points -----------------------------------------------------------------------
    def doprint(self, expr: Any) -> str:
        """Python source for ``expr`` (an expression of the array namespace and names)."""
        expr = rewrite_log(sp.sympify(expr))
        if expr.has(sp.I):
            raise CodegenError(
                f"complex expression {expr} (contains I): the generated code is real-valued; simplify it first"
            )
        return self._print(expr)

    # -- helpers ----------------------------------------------------------------------------
    @property
    def _a(self) -> str:
        return self.target.array

    def _ns(self, which: str) -> str:
        if which == "special":
            self.used_special = True
            return self.target.special
        return self.target.array

    def _paren(self, expr: sp.Basic, level: int, strict: bool = False) -> str:
        s = self._print(expr)
        p = self._prec(expr)
        if p < level or (strict and p <= level):
            return f"({s})"
        return s

    def _prec(self, expr: sp.Basic) -> int:
        if isinstance(expr, sp.Rational) and not isinstance(expr, sp.Integer):
            return _P_ATOM  # printed parenthesised
        if isinstance(expr, sp.Expr) and expr.is_number and not expr.is_Rational:
            return _P_ADD if expr.is_extended_negative else _P_ATOM  # a float literal
        if isinstance(expr, (sp.Integer, sp.Float)) and expr < 0:
            return _P_ADD
        if isinstance(expr, sp.Mul) and expr.could_extract_minus_sign():
            return _P_ADD
        if isinstance(expr, sp.Mul):
            return _P_MUL  # printed as num/den
        if isinstance(expr, sp.Pow):
            e = expr.exp
            if e.is_Integer or (e.is_Rational and e.q == 2) or e == sp.Rational(1, 3):
                return _P_MUL  # unrolled products, 1/(..), sqrt(..)*..
            return _P_FUNC
        if isinstance(expr, (sp.Piecewise, sp.Function, sp.Min, sp.Max)):
            return _P_FUNC
        return precedence(expr)

    def _ipow(self, base: sp.Basic, n: int) -> str:
        b = self._paren(base, _P_POW, strict=True)
        if n == 1:
            return b
        if n <= MAX_UNROLL:
            return "*".join([b] * n)
        return f"{b}**{n}"  # jax: lax.integer_pow (repeated squaring); numpy: power

    # -- dispatch ---------------------------------------------------------------------------
    def _print(self, expr: sp.Basic) -> str:
        if isinstance(expr, sp.Expr) and expr.is_number and not expr.is_Rational and not expr.is_Float:
            return self._print_constant(expr)
        for cls in type(expr).__mro__:
            meth = getattr(self, f"_print_{cls.__name__}", None)
            if meth is not None:
                return meth(expr)
        if isinstance(expr, sp.Function) or type(expr).__name__ in KNOWN_FUNCTIONS:
            return self._print_Function(expr)
        raise CodegenError(
            f"cannot print {type(expr).__name__} ({expr}) as {self.target.name} code; "
            "rewrite it with elementary functions, erf, gamma, Piecewise or Min/Max"
        )

    # -- atoms ------------------------------------------------------------------------------
    def _print_Symbol(self, expr: sp.Symbol) -> str:
        name = self.names.get(expr, expr.name)
        if not name.isidentifier() or keyword.iskeyword(name):
            raise CodegenError(f"symbol {expr.name!r} is not a Python identifier; pass names={{symbol: 'name'}}")
        return name

    def _print_Integer(self, expr: sp.Integer) -> str:
        n = int(expr)
        if abs(n) > _INT_LIMIT:
            return _float_literal(n).format(a=self._a)
        return str(n)

    def _print_Rational(self, expr: sp.Rational) -> str:
        p, q = int(expr.p), int(expr.q)
        # Python evaluates the literal quotient p/q exactly rounded, before any array sees it.
        return f"({p}/{q})"

    def _print_Float(self, expr: sp.Float) -> str:
        return _float_literal(expr).format(a=self._a)

    def _print_constant(self, expr: sp.Expr) -> str:
        """A closed numeric subexpression (pi, sqrt(2), pi/(pi - 1)): its correctly rounded double."""
        if str(expr) in KNOWN_CONSTANTS:
            return KNOWN_CONSTANTS[str(expr)]
        if expr.has(sp.zoo, sp.nan, sp.I) or expr.is_real is False:
            raise CodegenError(f"constant {expr} is not a finite real number; simplify the expression first")
        value = sp.N(expr, 40)
        if not value.is_real or not value.is_finite:
            if value in (sp.oo, -sp.oo):
                return ("(-" if value < 0 else "") + f"{self._a}.inf" + (")" if value < 0 else "")
            raise CodegenError(f"constant {expr} is not a finite real number; simplify the expression first")
        return _float_literal(value).format(a=self._a)

    def _print_Infinity(self, expr: sp.Basic) -> str:
        return f"{self._a}.inf"

    def _print_NegativeInfinity(self, expr: sp.Basic) -> str:
        return f"(-{self._a}.inf)"

    def _print_NaN(self, expr: sp.Basic) -> str:
        return f"{self._a}.nan"

    def _print_ImaginaryUnit(self, expr: sp.Basic) -> str:
        raise CodegenError("complex expression (contains I): the generated code is real-valued; simplify it first")

    def _print_ComplexInfinity(self, expr: sp.Basic) -> str:
        raise CodegenError("expression contains zoo (complex infinity); it is undefined at this point")

    def _print_BooleanTrue(self, expr: sp.Basic) -> str:
        return "True"

    def _print_BooleanFalse(self, expr: sp.Basic) -> str:
        return "False"

    # -- arithmetic -------------------------------------------------------------------------
    def _print_Add(self, expr: sp.Add) -> str:
        terms = list(expr.args)
        # numbers last, like hand-written code: (x + 1), not (1 + x)
        terms.sort(key=lambda t: t.is_Number)
        out = self._paren(terms[0], _P_ADD)
        for t in terms[1:]:
            if t.could_extract_minus_sign():
                out += " - " + self._paren(-t, _P_ADD, strict=True)
            else:
                out += " + " + self._paren(t, _P_ADD)
        return out

    def _print_Mul(self, expr: sp.Mul) -> str:
        coeff, factors = expr.as_coeff_mul()
        # fold every closed numeric factor (sqrt(2), pi, ...) into one correctly rounded literal
        numeric = [f for f in factors if f.is_number]
        if numeric:
            coeff = sp.Mul(coeff, *numeric)
            factors = tuple(f for f in factors if not f.is_number)
            if not factors:
                return self._print(coeff)
        sign = ""
        if coeff < 0:
            sign, coeff = "-", -coeff
        num: list[str] = []
        den: list[str] = []
        if coeff != 1:
            if isinstance(coeff, sp.Rational) and abs(coeff.p) <= _INT_LIMIT and coeff.q <= _INT_LIMIT:
                if coeff.p != 1:
                    num.append(str(coeff.p))
                if coeff.q != 1:
                    den.append(str(coeff.q))
            else:
                num.append(self._print(coeff) if not coeff.is_Rational else _float_literal(coeff).format(a=self._a))
        for f in factors:
            if isinstance(f, sp.Pow) and f.exp.is_Rational and f.exp < 0:
                if f.exp == -1:
                    den.append(self._paren(f.base, _P_POW, strict=True))
                else:
                    den.append(self._paren(sp.Pow(f.base, -f.exp, evaluate=False), _P_MUL, strict=True))
            else:
                num.append(self._paren(f, _P_MUL))
        s = "*".join(num) if num else "1"
        if den:
            d = den[0] if len(den) == 1 else "(" + "*".join(den) + ")"
            s = f"{s}/{d}"
        return sign + s

    def _print_Pow(self, expr: sp.Pow) -> str:
        base, e = expr.base, expr.exp
        sq = f"{self._a}.sqrt"
        if e.is_Integer:
            n = int(e)
            if n == 0:
                return "1"
            if n > 0:
                return self._ipow(base, n)
            return (
                f"1/{self._paren(sp.Pow(base, -e, evaluate=False), _P_MUL, strict=True)}"
                if n < -1
                else f"1/{self._paren(base, _P_POW, strict=True)}"
            )
        if e.is_Rational and e.q == 2:
            p = int(e.p)
            root = f"{sq}({self._print(base)})"
            k = (abs(p) - 1) // 2
            body = root if k == 0 else f"{self._ipow(base, k)}*{root}"
            return body if p > 0 else (f"1/{root}" if k == 0 else f"1/({body})")
        if e == sp.Rational(1, 3):
            return f"{self._a}.cbrt({self._print(base)})"
        if base == sp.E:
            return f"{self._a}.exp({self._print(e)})"
        return f"{self._a}.power({self._print(base)}, {self._print(e)})"

    # -- functions --------------------------------------------------------------------------
    def _print_Function(self, expr: sp.Function) -> str:
        name = type(expr).__name__
        if name in HELPERS:  # a function neither jax.scipy.special nor scipy.special has (fast/_specfun.py)
            self.used_helpers.add(name)
            return f"{HELPERS[name][0]}({', '.join(self._print(a) for a in expr.args)})"
        if name not in KNOWN_FUNCTIONS:
            raise CodegenError(
                f"function {name} has no {self.target.name} translation; known: {', '.join(sorted(KNOWN_FUNCTIONS))}"
            )
        ns, fname = KNOWN_FUNCTIONS[name]
        args = [self._print(a) for a in expr.args]
        f = f"{self._ns(ns)}.{fname}"
        if name in ("Min", "Max"):
            out = args[-1]
            for a in reversed(args[:-1]):
                out = f"{f}({a}, {out})"
            return out
        return f"{f}({', '.join(args)})"

    def _print_Heaviside(self, expr: sp.Heaviside) -> str:
        arg = self._print(expr.args[0])
        h0 = expr.args[1] if len(expr.args) > 1 else sp.Rational(1, 2)
        a = self._a
        return f"{a}.where({arg} > 0, 1.0, {a}.where({arg} < 0, 0.0, {_float_literal(h0).format(a=a)}))"

    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        a = self._a
        pieces = list(expr.args)
        last_e, last_c = pieces[-1]
        if last_c == sp.true:
            acc = self._branch(last_e)
            pieces = pieces[:-1]
        else:
            acc = f"{a}.nan"
        for e, c in reversed(pieces):
            if c == sp.true:
                acc = self._branch(e)
                continue
            if c == sp.false:
                continue
            acc = f"{a}.where({self._print(c)}, {self._branch(e)}, {acc})"
        return acc

    def _branch(self, e: sp.Basic) -> str:
        # integer-valued branches print as float literals so that where() keeps a float dtype
        if isinstance(e, sp.Integer):
            return _float_literal(e).format(a=self._a)
        return self._print(e)

    # -- logic ------------------------------------------------------------------------------
    def _print_Relational(self, expr: sp.core.relational.Relational) -> str:
        op = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}[expr.rel_op]
        return f"({self._paren(expr.lhs, _P_REL, strict=True)} {op} {self._paren(expr.rhs, _P_REL, strict=True)})"

    def _logic(self, expr: sp.Basic, fn: str) -> str:
        args = [self._print(a) for a in expr.args]
        out = args[-1]
        for s in reversed(args[:-1]):
            out = f"{self._a}.{fn}({s}, {out})"
        return out

    def _print_And(self, expr: sp.And) -> str:
        return self._logic(expr, "logical_and")

    def _print_Or(self, expr: sp.Or) -> str:
        return self._logic(expr, "logical_or")

    def _print_Not(self, expr: sp.Not) -> str:
        return f"{self._a}.logical_not({self._print(expr.args[0])})"


def rewrite_log(expr: sp.Basic) -> sp.Basic:
    """``log(x)`` -> ``log1p(x - 1)`` where ``x - 1`` cancels symbolically to something no more
    complex than ``x`` (at most 4 more operations; e.g. ``log((B-2)/(B-3))`` -> ``log1p(1/(B-3))``): accurate near x = 1."""
    from sympy.codegen.cfunctions import log1p

    def repl(node: sp.Basic) -> sp.Basic:
        arg = node.args[0]
        if not arg.free_symbols or arg.is_Atom:
            return node
        d = sp.cancel(sp.together(arg - 1))
        return log1p(d) if sp.count_ops(d) <= sp.count_ops(arg) + 4 else node

    return expr.replace(lambda n: isinstance(n, sp.log) and len(n.args) == 1, repl) if expr.has(sp.log) else expr


# ---------------------------------------------------------------------------------------------
# Assignments with shared subexpressions
# ---------------------------------------------------------------------------------------------
def _hoist_power_bases(
    pairs: list[tuple[sp.Symbol, sp.Expr]], temps: Iterable[sp.Symbol]
) -> list[tuple[sp.Symbol, sp.Expr]]:
    """Give a name to every compound base of an unrolled power, so x*x*x never repeats work."""
    temps = iter(temps)
    out: list[tuple[sp.Symbol, sp.Expr]] = []
    for sym, expr in pairs:
        while True:
            target = None
            for node in sp.postorder_traversal(expr):
                if (
                    isinstance(node, sp.Pow)
                    and not node.base.is_Atom
                    and node.exp.is_Rational
                    and (
                        abs(node.exp) >= 2
                        or (node.exp.q == 2 and abs(node.exp) > 1)
                        or (node.exp.is_Integer and node.exp < -1)
                    )
                ):
                    target = node.base
                    break
            if target is None:
                break
            t = next(temps)
            out.append((t, target))
            expr = expr.xreplace({target: t})
        out.append((sym, expr))
    return out


def print_assignments(
    exprs: Sequence[sp.Expr],
    names: Mapping[sp.Symbol, str] | None = None,
    *,
    target: str = "jax",
    prefix: str = "_t",
) -> tuple[list[str], list[str], ArrayPrinter]:
    """Print ``exprs`` with shared subexpressions: ``(lines, outputs, printer)``.

    ``lines`` are assignments ``_t0 = ...`` (common subexpressions from :func:`sympy.cse` and
    compound bases of integer powers), ``outputs`` the printed expressions of ``exprs`` in terms
    of them. ``printer.used_special`` tells whether the special-function namespace is needed.
    """
    exprs = [rewrite_log(sp.sympify(e)) for e in exprs]
    taken = {str(s) for e in exprs for s in e.free_symbols} | set((names or {}).values())
    counter = iter(range(10**9))

    def fresh() -> Iterable[sp.Symbol]:
        while True:
            name = f"{prefix}{next(counter)}"
            if name not in taken:
                yield sp.Symbol(name)

    gen = fresh()
    replacements, reduced = sp.cse(exprs, symbols=gen, order="none")
    pairs = _hoist_power_bases(list(replacements) + [(sp.Symbol(f"__out{i}"), r) for i, r in enumerate(reduced)], gen)
    printer = ArrayPrinter(target, names)
    lines: list[str] = []
    outputs: list[str] = []
    for sym, expr in pairs:
        if sym.name.startswith("__out"):
            outputs.append(printer.doprint(expr))
        else:
            lines.append(f"{sym.name} = {printer.doprint(expr)}")
    return lines, outputs, printer


def jax_code(expr: Any, target: str = "jax", names: Mapping[sp.Symbol, str] | None = None) -> str:
    """One-line array code for ``expr`` (no subexpression sharing); see :class:`ArrayPrinter`."""
    return ArrayPrinter(target, names).doprint(expr)


def function_source(
    name: str, exprs: Sequence[sp.Expr] | sp.Expr, args: Sequence[sp.Symbol], *, target: str = "jax"
) -> str:
    """Source of ``def name(*args)`` returning ``exprs`` (a tuple if a sequence is given)."""
    single = isinstance(exprs, sp.Basic)
    seq = [exprs] if single else list(exprs)
    arg_names = {s: _identifier(s.name, i) for i, s in enumerate(args)}
    lines, outs, _printer = print_assignments(seq, arg_names, target=target)
    body = [f"def {name}({', '.join(arg_names[s] for s in args)}):"]
    body += [f"    {ln}" for ln in lines]
    ret = outs[0] if single else "(" + ", ".join(outs) + ("," if len(outs) == 1 else "") + ")"
    body.append(f"    return {ret}")
    return "\n".join(body) + "\n"


def _identifier(name: str, i: int) -> str:
    return name if name.isidentifier() and not keyword.iskeyword(name) else f"_arg{i}"


def callable_source(expr: sp.Expr, symbols: Sequence[sp.Symbol], target: str = "jax") -> tuple[str, tuple[str, ...]]:
    """(source of ``_generated(*symbols)`` computing ``expr`` for ``target``, the special-function
    helpers it calls): what :func:`symbnmf.fast._specfun.callable_from_source` turns back into
    the function without SymPy (so a printed function can be kept as text, e.g. by
    ``symbnmf simulate``'s resolved-simulation cache)."""
    expr = sp.sympify(expr)
    src = function_source("_generated", expr, tuple(symbols), target=target)
    helpers = tuple(sorted({type(f).__name__ for f in expr.atoms(sp.Function)} & set(HELPERS)))
    return src, helpers


@functools.lru_cache(maxsize=512)
def _compiled(expr: sp.Expr, symbols: tuple[sp.Symbol, ...], target: str) -> Callable[..., Any]:
    src, helpers = callable_source(expr, symbols, target)
    fn = _specfun.callable_from_source(src, helpers, target)
    fn.__doc__ = f"{expr}\n\nGenerated {target} code:\n\n{src}"
    return fn


def jax_callable(expr: sp.Expr, *symbols: sp.Symbol) -> Callable[..., Any]:
    """A jit/vmap/grad-safe JAX function of ``symbols`` computing ``expr``.

    The source is printed by :class:`ArrayPrinter` (special functions via ``jax.scipy.special``,
    round-trip float literals, exact rationals, ``where`` for Piecewise, shared subexpressions)
    and keeps the input dtype (float32 or float64).
    """
    return _compiled(sp.sympify(expr), tuple(symbols), "jax")


def numpy_callable(expr: sp.Expr, *symbols: sp.Symbol) -> Callable[..., Any]:
    """Same as :func:`jax_callable` for NumPy (``scipy.special`` for erf/gamma)."""
    return _compiled(sp.sympify(expr), tuple(symbols), "numpy")
